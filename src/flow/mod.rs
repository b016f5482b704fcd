//! The NAT: guest flows (TCP connections, UDP flows, ICMP echo), each tied to one host socket.
//!
//! Flows of each kind live in a slab (kind and index make their mio token) and are found by
//! their addresses through a hash map, so the cost per frame does not depend on how many flows
//! exist.
//! Timers (retransmissions, delayed closes) are kept in an ordered set keyed by deadline,
//! so the event loop can sleep until the earliest one and wake only the flows that are due.
//!
//! A guest SYN creates a flow and starts a non-blocking connect to the same address on the
//! host (N+2 becomes 127.0.0.1). The guest gets its SYN-ACK only when that connect succeeds,
//! and an RST when it fails: a connection is never accepted that the host cannot make.

mod icmp;
mod inbound;
mod nat;
mod report;
mod resolver;
mod tcp;
mod udp;

use std::collections::{BTreeSet, HashMap};

use mio::{Interest, Registry, Token};
use slab::Slab;
use smoltcp::time::Instant;

use crate::config::{self, NetConfig};
use crate::stack::{EchoRequest, FlowKey, Stack};
use crate::stats::latency::LatencySample;
use crate::stats::{DropReason, FlowCounters};
use icmp::{EchoFlow, EchoKey};
use nat::{Nat, PingSocket};
pub use resolver::first_nameserver;
use tcp::{Status, TcpFlow};
use udp::{IdleTimeouts, UdpFlow};

pub use inbound::InboundRefused;

/// Most guest TCP flows at once; a SYN beyond this is answered with an RST and counted.
pub const MAX_TCP_FLOWS: usize = 16_384;
/// Most UDP flows at once; a datagram that would open one more is dropped and counted.
pub const MAX_UDP_FLOWS: usize = 4_096;
/// Most ICMP echo flows (guest identifier and destination) at once.
pub const MAX_ECHO_FLOWS: usize = 256;

/// mio tokens below this belong to the event loop; flows use the ones above (see [`FlowRef`]).
pub const FIRST_FLOW_TOKEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Tcp = 0,
    Udp = 1,
    Echo = 2,
}

/// A flow's kind and slab index, which is also its mio token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FlowRef {
    kind: Kind,
    index: usize,
}

impl FlowRef {
    /// Sorts after every real flow with the same deadline (for range bounds).
    const LAST: FlowRef = FlowRef {
        kind: Kind::Echo,
        index: usize::MAX,
    };

    fn token(self) -> Token {
        Token(FIRST_FLOW_TOKEN + (self.index << 2 | self.kind as usize))
    }

    fn of_token(token: Token) -> Option<FlowRef> {
        let raw = token.0.checked_sub(FIRST_FLOW_TOKEN)?;
        let kind = match raw & 3 {
            0 => Kind::Tcp,
            1 => Kind::Udp,
            2 => Kind::Echo,
            _ => return None,
        };
        Some(FlowRef {
            kind,
            index: raw >> 2,
        })
    }
}

/// Whether this process may send ICMP echo to remote hosts, learnt on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PingSupport {
    Untried,
    Works(PingSocket),
    Unavailable,
}

pub struct FlowTable {
    nat: Nat,
    tcp_by_key: HashMap<FlowKey, usize>,
    tcp: Slab<TcpFlow>,
    udp_by_key: HashMap<FlowKey, usize>,
    udp: Slab<UdpFlow>,
    echo_by_key: HashMap<EchoKey, usize>,
    echo: Slab<EchoFlow>,
    ping: PingSupport,
    /// Reused buffer for echo messages.
    scratch: Vec<u8>,
    timers: BTreeSet<(Instant, FlowRef)>,
    /// TCP flows that took frames in the current TAP batch and still need driving.
    dirty: Vec<usize>,
    /// Latencies measured by inbound flows, for their forwards' histograms.
    samples: Vec<LatencySample>,
    pub counters: FlowCounters,
}

/// Files `flow` under timer `next` instead of `slot`'s current one.
fn reschedule(
    timers: &mut BTreeSet<(Instant, FlowRef)>,
    flow: FlowRef,
    slot: &mut Option<Instant>,
    next: Option<Instant>,
) {
    if *slot == next {
        return;
    }
    if let Some(old) = slot.take() {
        timers.remove(&(old, flow));
    }
    if let Some(new) = next {
        timers.insert((new, flow));
    }
    *slot = next;
}

impl FlowTable {
    pub fn new(cfg: NetConfig) -> Self {
        FlowTable {
            nat: Nat::new(cfg),
            tcp_by_key: HashMap::new(),
            tcp: Slab::new(),
            udp_by_key: HashMap::new(),
            udp: Slab::new(),
            echo_by_key: HashMap::new(),
            echo: Slab::new(),
            ping: PingSupport::Untried,
            scratch: vec![0; icmp::SCRATCH_LEN],
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            samples: Vec::new(),
            counters: FlowCounters::default(),
        }
    }

    /// Open TCP flows.
    pub fn tcp_count(&self) -> usize {
        self.tcp.len()
    }

    /// Whether any TCP flow still owes its host socket bytes the guest sent.
    pub fn owe_hosts(&mut self) -> bool {
        self.tcp.iter_mut().any(|(_, flow)| flow.owes_host())
    }

    /// Open UDP flows.
    pub fn udp_count(&self) -> usize {
        self.udp.len()
    }

    /// Latencies that inbound flows measured since the last call.
    pub fn take_samples(&mut self) -> std::vec::Drain<'_, LatencySample> {
        self.samples.drain(..)
    }

    /// Handles a TCP segment from the guest that [`Stack::classify`] attributed to `key`.
    pub fn on_guest_segment(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        registry: &Registry,
        key: FlowKey,
        opens: bool,
    ) {
        if let Some(&index) = self.tcp_by_key.get(&key) {
            let flow = &mut self.tcp[index];
            stack.deliver_batched(now, flow.guest_mut());
            if !flow.dirty {
                flow.dirty = true;
                self.dirty.push(index);
            }
        } else if opens {
            self.open_tcp(now, stack, registry, key);
        } else {
            // No flow: smoltcp answers with an RST (or ignores an RST).
            stack.counters.drop(DropReason::NoFlow);
            stack.deliver(now, None);
        }
    }

    fn open_tcp(&mut self, now: Instant, stack: &mut Stack, registry: &Registry, key: FlowKey) {
        let dest = self.nat.destination(key.remote);
        if self.tcp.len() >= MAX_TCP_FLOWS || dest.is_none() {
            if dest.is_some() {
                stack.counters.drop(DropReason::FlowLimit);
            }
            stack.deliver(now, None);
            return;
        }
        let mut guest = stack.open_guest_socket(key);
        stack.deliver(now, Some(&mut guest));
        if guest.state() != smoltcp::socket::tcp::State::SynReceived {
            // smoltcp did not take the SYN (e.g. port 0); it answered for itself.
            return;
        }
        let entry = self.tcp.vacant_entry();
        let flow_ref = FlowRef {
            kind: Kind::Tcp,
            index: entry.key(),
        };
        let token = flow_ref.token();
        let registered = dest
            .map(|d| self.nat.connect_tcp(d))
            .and_then(Result::ok)
            .and_then(|mut host| {
                let interest = Interest::READABLE | Interest::WRITABLE;
                registry.register(&mut host, token, interest).ok()?;
                Some(host)
            });
        let Some(host) = registered else {
            guest.refuse();
            stack.poll_flow(now, &mut guest);
            self.counters.refused += 1;
            return;
        };
        entry.insert(TcpFlow::new(key, guest, host, now, None));
        self.tcp_by_key.insert(key, flow_ref.index);
        tracing::debug!(guest = %key.guest, remote = %key.remote, ?dest, "tcp flow connecting");
    }

    /// Handles a UDP datagram from the guest for flow `key` (payload in the stack).
    pub fn on_guest_datagram(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        registry: &Registry,
        key: FlowKey,
    ) {
        let index = match self.udp_by_key.get(&key) {
            Some(&index) => index,
            None if stack.refuse_datagram_by_policy(key) => return,
            None => match self.open_udp(now, stack, registry, key) {
                Some(index) => index,
                None => {
                    stack.consume_received();
                    return;
                }
            },
        };
        self.udp[index].send_to_host(now, stack);
    }

    fn open_udp(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        registry: &Registry,
        key: FlowKey,
    ) -> Option<usize> {
        if self.udp.len() >= MAX_UDP_FLOWS {
            stack.counters.drop(DropReason::FlowLimit);
            return None;
        }
        let Some(dest) = self.nat.destination(key.remote) else {
            // N+3 without an upstream, or a port N+3 does not serve.
            stack.counters.drop(DropReason::Unsupported);
            return None;
        };
        let host = match self.nat.connect_udp(dest) {
            Ok(host) => host,
            Err(e) => {
                tracing::debug!(remote = %key.remote, %dest, error = %e, "udp socket failed");
                stack.counters.drop(DropReason::Unsupported);
                return None;
            }
        };
        let entry = self.udp.vacant_entry();
        let flow_ref = FlowRef {
            kind: Kind::Udp,
            index: entry.key(),
        };
        let cfg = self.nat.config();
        let timeouts = if cfg.is_dns(key.remote.ip()) {
            // A DNS exchange is one query and one answer; its flow need not linger (libslirp
            // expires them fast too), or a resolver's random source ports pile up sockets.
            IdleTimeouts {
                unanswered: config::DNS_TIMEOUT,
                answered: config::DNS_TIMEOUT,
            }
        } else {
            IdleTimeouts {
                unanswered: config::UDP_UNREPLIED_TIMEOUT.min(cfg.udp_timeout),
                answered: cfg.udp_timeout,
            }
        };
        let mut flow = UdpFlow::new(key, host, timeouts, now);
        registry
            .register(&mut flow.host, flow_ref.token(), Interest::READABLE)
            .ok()?;
        let expiry = flow.expires_at();
        reschedule(&mut self.timers, flow_ref, &mut flow.deadline, Some(expiry));
        entry.insert(flow);
        self.udp_by_key.insert(key, flow_ref.index);
        self.counters.udp_opened += 1;
        tracing::debug!(guest = %key.guest, remote = %key.remote, %dest, "udp flow");
        Some(flow_ref.index)
    }

    /// Handles an ICMP echo request from the guest to a remote host (data in the stack).
    pub fn on_guest_echo(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        registry: &Registry,
        request: EchoRequest,
    ) {
        let key = (request.guest, request.remote, request.ident);
        let index = match self.echo_by_key.get(&key) {
            Some(&index) => Some(index),
            None => self.open_echo(now, registry, key),
        };
        match index {
            Some(index) => self.echo[index].send_to_host(now, stack, request, &mut self.scratch),
            None => {
                stack.counters.drop(DropReason::Unsupported);
                stack.consume_received();
            }
        }
    }

    fn open_echo(&mut self, now: Instant, registry: &Registry, key: EchoKey) -> Option<usize> {
        if self.echo.len() >= MAX_ECHO_FLOWS {
            return None;
        }
        let (host, kind) = self.ping_socket(key.1)?;
        let entry = self.echo.vacant_entry();
        let flow_ref = FlowRef {
            kind: Kind::Echo,
            index: entry.key(),
        };
        let mut flow = EchoFlow::new(key, host, kind, now);
        registry
            .register(&mut flow.host, flow_ref.token(), Interest::READABLE)
            .ok()?;
        let expiry = now + to_smol(config::ECHO_TIMEOUT);
        reschedule(&mut self.timers, flow_ref, &mut flow.deadline, Some(expiry));
        entry.insert(flow);
        self.echo_by_key.insert(key, flow_ref.index);
        Some(flow_ref.index)
    }

    /// A socket for echo to `dest`, finding out on first use which kind is allowed.
    fn ping_socket(&mut self, dest: std::net::IpAddr) -> Option<(mio::net::UdpSocket, PingSocket)> {
        let kinds: &[PingSocket] = match self.ping {
            PingSupport::Works(kind) => &[kind],
            PingSupport::Unavailable => return None,
            PingSupport::Untried => &[PingSocket::Unprivileged, PingSocket::Raw],
        };
        for &kind in kinds {
            if let Ok(socket) = self.nat.connect_ping(dest, kind) {
                self.ping = PingSupport::Works(kind);
                return Some((socket, kind));
            }
        }
        if self.ping == PingSupport::Untried {
            tracing::warn!(
                "ICMP echo to remote hosts is not possible: this group is outside \
                 net.ipv4.ping_group_range and there is no CAP_NET_RAW; only the gateway and \
                 DNS addresses answer pings"
            );
            self.ping = PingSupport::Unavailable;
        }
        None
    }

    /// Drives the flows that took frames since the last call (end of a TAP batch).
    pub fn drive_dirty(&mut self, now: Instant, stack: &mut Stack, registry: &Registry) {
        while let Some(index) = self.dirty.pop() {
            if let Some(flow) = self.tcp.get_mut(index) {
                flow.dirty = false;
                self.drive_tcp(now, stack, registry, index);
            }
        }
    }

    /// The flow a mio token belongs to, if it is a flow's token.
    pub fn owns(token: Token) -> bool {
        FlowRef::of_token(token).is_some()
    }

    /// Handles readiness of a flow's host socket.
    pub fn on_host_event(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        registry: &Registry,
        token: Token,
    ) {
        let Some(flow) = FlowRef::of_token(token) else {
            return;
        };
        match flow.kind {
            Kind::Tcp if self.tcp.contains(flow.index) => {
                self.drive_tcp(now, stack, registry, flow.index)
            }
            Kind::Udp => {
                if let Some(udp) = self.udp.get_mut(flow.index) {
                    udp.deliver_to_guest(now, stack);
                }
            }
            Kind::Echo => {
                if let Some(echo) = self.echo.get_mut(flow.index) {
                    echo.deliver_to_guest(now, stack, &mut self.scratch);
                }
            }
            Kind::Tcp => {}
        }
    }

    /// Handles every flow whose timer is due.
    ///
    /// Only the timers due on entry run: a flow that files itself again for "now" (smoltcp
    /// does while the TAP queue is full) waits for the next turn of the loop, after the queue
    /// was written out, instead of spinning here.
    pub fn on_timers(&mut self, now: Instant, stack: &mut Stack, registry: &Registry) {
        let later = self.timers.split_off(&(now, FlowRef::LAST));
        let due = std::mem::replace(&mut self.timers, later);
        for (_, flow) in due {
            match flow.kind {
                Kind::Tcp => {
                    if let Some(tcp) = self.tcp.get_mut(flow.index) {
                        tcp.deadline = None;
                        self.drive_tcp(now, stack, registry, flow.index);
                    }
                }
                Kind::Udp => {
                    if let Some(udp) = self.udp.get_mut(flow.index) {
                        udp.deadline = None;
                        let expiry = udp.expires_at();
                        if expiry <= now {
                            let mut udp = self.udp.remove(flow.index);
                            self.udp_by_key.remove(&udp.key);
                            let _ = registry.deregister(&mut udp.host);
                            self.counters.udp_expired += 1;
                            self.counters.bytes_to_host += udp.to_host.bytes;
                            self.counters.bytes_to_guest += udp.to_guest.bytes;
                        } else {
                            reschedule(&mut self.timers, flow, &mut udp.deadline, Some(expiry));
                        }
                    }
                }
                Kind::Echo => {
                    if let Some(echo) = self.echo.get_mut(flow.index) {
                        echo.deadline = None;
                        let expiry = echo.last_active + to_smol(config::ECHO_TIMEOUT);
                        if expiry <= now {
                            let mut echo = self.echo.remove(flow.index);
                            self.echo_by_key.remove(&echo.key);
                            let _ = registry.deregister(&mut echo.host);
                            self.counters.bytes_to_host += echo.to_host.bytes;
                            self.counters.bytes_to_guest += echo.to_guest.bytes;
                        } else {
                            reschedule(&mut self.timers, flow, &mut echo.deadline, Some(expiry));
                        }
                    }
                }
            }
        }
    }

    /// The earliest flow timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|&(deadline, _)| deadline)
    }

    fn drive_tcp(&mut self, now: Instant, stack: &mut Stack, registry: &Registry, index: usize) {
        let flow_ref = FlowRef {
            kind: Kind::Tcp,
            index,
        };
        let flow = &mut self.tcp[index];
        let was_connecting = !flow.is_open();
        let status = flow.drive(now, stack, &mut self.samples);
        match status {
            Status::Alive => {
                if was_connecting && flow.is_open() {
                    self.counters.opened += 1;
                }
                let next = stack.poll_at(now, flow.guest_mut());
                reschedule(&mut self.timers, flow_ref, &mut flow.deadline, next);
            }
            Status::Refused | Status::Closed | Status::Reset => {
                match status {
                    Status::Refused => self.counters.refused += 1,
                    Status::Closed => self.counters.closed += 1,
                    _ => self.counters.reset += 1,
                }
                let mut flow = self.tcp.remove(index);
                self.counters.bytes_to_host += flow.to_host_bytes;
                self.counters.bytes_to_guest += flow.to_guest_bytes;
                reschedule(&mut self.timers, flow_ref, &mut flow.deadline, None);
                if flow.dirty {
                    self.dirty.retain(|&i| i != index);
                }
                self.tcp_by_key.remove(&flow.key);
                let _ = registry.deregister(&mut flow.host);
                tracing::debug!(guest = %flow.key.guest, remote = %flow.key.remote, ?status, "tcp flow ended");
                // Dropping `flow` closes the host socket.
            }
        }
    }
}

fn to_smol(d: std::time::Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(d.as_micros() as u64)
}
