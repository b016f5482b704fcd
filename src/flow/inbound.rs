//! Forwarded connections on the stack path: a host client accepted by a port forward, spliced
//! to a smoltcp socket that dials the guest.
//!
//! Such a connection is an ordinary [`TcpFlow`] once made. Its key is the 5-tuple as the
//! guest sees it (the guest's listening endpoint and the peer address chosen for the client),
//! which is exactly what [`crate::stack::Stack::classify`] computes for the guest's answers,
//! so the guest's segments find it through the same map as outbound flows. The host side is
//! connected from the start, so the flow is open at once; the guest side is in SYN-SENT, and
//! nothing is read from the client until the guest accepts (smoltcp cannot take data before).
//! A guest that refuses (RST) ends the flow with an RST to the client; one that never answers
//! ends it after [`crate::stack::GUEST_CONNECT_TIMEOUT`].

use std::net::SocketAddrV4;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Interest, Registry};
use smoltcp::socket::tcp::State;
use smoltcp::time::Instant;

use super::tcp::TcpFlow;
use super::{FlowRef, FlowTable, Kind, MAX_TCP_FLOWS};
use crate::stack::{FlowKey, Stack};
use crate::stats::DropReason;

/// Ports tried for a renumbered peer (see [`FlowTable::open_inbound`]): the Linux default
/// ephemeral range.
const RENUMBER_PORTS: std::ops::Range<u16> = 32768..61000;
/// How many ports to try before refusing.
const RENUMBER_ATTEMPTS: u16 = 64;

/// Why a forwarded connection could not be made; the client is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InboundRefused {
    /// The flow table is full ([`MAX_TCP_FLOWS`]).
    #[error("flow table full")]
    FlowLimit,
    /// The 5-tuple is in use by another flow and may not be renumbered.
    #[error("5-tuple in use")]
    InUse,
    /// smoltcp refused the endpoints, or the host socket could not be registered.
    #[error("cannot open the guest side")]
    Failed,
}

impl FlowTable {
    /// Makes a flow for a client accepted by port forward `forward`: a guest socket that dials
    /// `guest` from `peer`, tied to `host`. With `renumber`, a `peer` port already in use
    /// (with the same guest endpoint) is replaced by a free one; without, that is refused.
    /// On failure the client is reset.
    #[allow(clippy::too_many_arguments)]
    pub fn open_inbound(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        registry: &Registry,
        guest: SocketAddrV4,
        peer: SocketAddrV4,
        renumber: bool,
        host: TcpStream,
        forward: u64,
    ) -> Result<FlowKey, InboundRefused> {
        let outcome =
            self.try_open_inbound(now, stack, registry, guest, peer, renumber, host, forward);
        if let Err((reason, host)) = outcome {
            if reason == InboundRefused::FlowLimit {
                stack.counters.drop(DropReason::FlowLimit);
            }
            if let Some(host) = host {
                let _ = socket2::SockRef::from(&host).set_linger(Some(Duration::ZERO));
            }
            return Err(reason);
        }
        outcome.map_err(|(reason, _)| reason)
    }

    #[allow(clippy::too_many_arguments)]
    fn try_open_inbound(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        registry: &Registry,
        guest: SocketAddrV4,
        peer: SocketAddrV4,
        renumber: bool,
        host: TcpStream,
        forward: u64,
    ) -> Result<FlowKey, (InboundRefused, Option<TcpStream>)> {
        if self.tcp.len() >= MAX_TCP_FLOWS {
            return Err((InboundRefused::FlowLimit, Some(host)));
        }
        let mut key = FlowKey {
            guest: guest.into(),
            remote: peer.into(),
        };
        if self.tcp_by_key.contains_key(&key) {
            if !renumber {
                return Err((InboundRefused::InUse, Some(host)));
            }
            let span = RENUMBER_PORTS.end - RENUMBER_PORTS.start;
            let start = peer.port().wrapping_mul(7919) % span;
            let free = (0..RENUMBER_ATTEMPTS)
                .map(|i| RENUMBER_PORTS.start + (start + i * 613) % span)
                .map(|port| FlowKey {
                    guest: guest.into(),
                    remote: SocketAddrV4::new(*peer.ip(), port).into(),
                })
                .find(|k| !self.tcp_by_key.contains_key(k));
            match free {
                Some(k) => key = k,
                None => return Err((InboundRefused::InUse, Some(host))),
            }
        }
        let Some(guest_socket) = stack.connect_guest_socket(key) else {
            return Err((InboundRefused::Failed, Some(host)));
        };
        let _ = host.set_nodelay(true);
        let entry = self.tcp.vacant_entry();
        let index = entry.key();
        let mut flow = TcpFlow::new(key, guest_socket, host, now, Some(forward));
        let token = FlowRef {
            kind: Kind::Tcp,
            index,
        }
        .token();
        if registry
            .register(
                &mut flow.host,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return Err((InboundRefused::Failed, Some(flow.host)));
        }
        entry.insert(flow);
        self.tcp_by_key.insert(key, index);
        tracing::debug!(guest = %key.guest, peer = %key.remote, "forwarded tcp flow connecting");
        // Sends the SYN (or asks for the guest's MAC first).
        self.drive_tcp(now, stack, registry, index);
        Ok(key)
    }

    /// Re-drives forwarded connections still waiting for the guest: smoltcp holds a SYN for a
    /// second after asking for the guest's MAC unless the socket is polled once it is known.
    pub fn on_neighbor_learned(&mut self, now: Instant, stack: &mut Stack, registry: &Registry) {
        let waiting: Vec<usize> = self
            .tcp
            .iter_mut()
            .filter_map(|(index, flow)| {
                (flow.guest_mut().state() == State::SynSent).then_some(index)
            })
            .collect();
        for index in waiting {
            if self.tcp.contains(index) {
                self.drive_tcp(now, stack, registry, index);
            }
        }
    }

    /// Whether a flow with this 5-tuple exists.
    pub fn contains_key(&self, key: &FlowKey) -> bool {
        self.tcp_by_key.contains_key(key)
    }
}
