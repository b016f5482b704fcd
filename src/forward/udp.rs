//! UDP port forwards: which host client each guest datagram answers.
//!
//! A UDP forward is one host socket. Each client address that sends to it gets a flow: the
//! peer address the guest sees (the client's own IPv4 address, or N+2 and a port for clients
//! on the host's loopback, on IPv6, or inside the guest's own network), so that the guest's
//! answers, addressed to that peer, find their way back to the client through the forward's
//! socket. A flow lives as long as datagrams pass either way, and ends [`UDP_FLOW_IDLE`]
//! after the last one. The table is bounded; a client beyond [`MAX_UDP_FLOWS`] is not served.
//!
//! Sans-IO: time comes in as a parameter, so expiry is tested with a virtual clock.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, SocketAddrV4};

use slab::Slab;
use smoltcp::time::{Duration, Instant};

use crate::stats::Traffic;
use crate::stats::report::{DirectionReport, FlowReport};

/// Flows over all UDP forwards.
pub const MAX_UDP_FLOWS: usize = 4096;
/// A flow with no datagram either way for this long is forgotten.
pub const UDP_FLOW_IDLE: Duration = Duration::from_secs(120);
/// Ports tried for a renumbered peer on N+2.
const RENUMBER_PORTS: std::ops::Range<u16> = 32768..61000;
const RENUMBER_ATTEMPTS: u16 = 64;

struct UdpFlow {
    forward: u64,
    client: SocketAddr,
    guest: SocketAddrV4,
    peer: SocketAddrV4,
    last: Instant,
    /// The timer this flow is filed under.
    deadline: Instant,
    opened: Instant,
    /// Client -> guest.
    to_guest: Traffic,
    /// Guest -> client.
    to_client: Traffic,
}

/// The flows of all UDP forwards.
#[derive(Default)]
pub struct UdpFlows {
    flows: Slab<UdpFlow>,
    by_client: HashMap<(u64, SocketAddr), usize>,
    by_guest: HashMap<(SocketAddrV4, SocketAddrV4), usize>,
    timers: BTreeSet<(Instant, usize)>,
    /// Bytes to the guest and to clients of flows that have ended.
    ended_bytes: (u64, u64),
}

impl UdpFlows {
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// A datagram from `client` arrived at forward `forward` (to guest endpoint `guest`):
    /// the peer address to send it from. `preferred` is the peer the client maps to; on N+2
    /// (`renumber`) another port is taken if that one is busy. `None` when the table is full
    /// or no peer port is free.
    pub fn on_client_datagram(
        &mut self,
        now: Instant,
        forward: u64,
        client: SocketAddr,
        guest: SocketAddrV4,
        preferred: SocketAddrV4,
        renumber: bool,
    ) -> Option<SocketAddrV4> {
        if let Some(&index) = self.by_client.get(&(forward, client)) {
            let flow = &mut self.flows[index];
            flow.last = now;
            return Some(flow.peer);
        }
        if self.flows.len() >= MAX_UDP_FLOWS {
            return None;
        }
        let mut peer = preferred;
        if self.by_guest.contains_key(&(guest, peer)) {
            if !renumber {
                return None;
            }
            let span = RENUMBER_PORTS.end - RENUMBER_PORTS.start;
            let start = preferred.port().wrapping_mul(7919) % span;
            peer = (0..RENUMBER_ATTEMPTS)
                .map(|i| RENUMBER_PORTS.start + (start + i * 613) % span)
                .map(|port| SocketAddrV4::new(*preferred.ip(), port))
                .find(|p| !self.by_guest.contains_key(&(guest, *p)))?;
        }
        let deadline = now + UDP_FLOW_IDLE;
        let index = self.flows.insert(UdpFlow {
            forward,
            client,
            guest,
            peer,
            last: now,
            deadline,
            opened: now,
            to_guest: Traffic::default(),
            to_client: Traffic::default(),
        });
        self.by_client.insert((forward, client), index);
        self.by_guest.insert((guest, peer), index);
        self.timers.insert((deadline, index));
        Some(peer)
    }

    /// A datagram from guest endpoint `guest` to `peer`: the forward and client it answers.
    pub fn on_guest_datagram(
        &mut self,
        now: Instant,
        guest: SocketAddrV4,
        peer: SocketAddrV4,
    ) -> Option<(u64, SocketAddr)> {
        let &index = self.by_guest.get(&(guest, peer))?;
        let flow = &mut self.flows[index];
        flow.last = now;
        Some((flow.forward, flow.client))
    }

    /// Counts a datagram of `len` bytes sent from `client` to the guest through `forward`.
    pub fn sent_to_guest(&mut self, forward: u64, client: SocketAddr, len: usize) {
        if let Some(&index) = self.by_client.get(&(forward, client)) {
            self.flows[index].to_guest.add(len);
        }
    }

    /// Counts a datagram of `len` bytes from `guest` to `peer` passed on to its client.
    pub fn sent_to_client(&mut self, guest: SocketAddrV4, peer: SocketAddrV4, len: usize) {
        if let Some(&index) = self.by_guest.get(&(guest, peer)) {
            self.flows[index].to_client.add(len);
        }
    }

    /// Bytes to the guest and to clients, of all flows since start.
    pub fn bytes(&self) -> (u64, u64) {
        self.flows.iter().fold(self.ended_bytes, |(g, c), (_, f)| {
            (g + f.to_guest.bytes, c + f.to_client.bytes)
        })
    }

    /// Flows of forward `forward` open now.
    pub fn count_of(&self, forward: u64) -> u64 {
        self.flows
            .iter()
            .filter(|(_, f)| f.forward == forward)
            .count() as u64
    }

    /// Every flow, as `list_flows` shows it.
    pub fn reports(&self, now: Instant) -> impl Iterator<Item = FlowReport> + '_ {
        self.flows.iter().map(move |(_, flow)| FlowReport {
            proto: "udp".into(),
            direction: "inbound".into(),
            forward_id: Some(flow.forward),
            path: "stack".into(),
            guest: flow.guest.to_string(),
            remote: flow.peer.to_string(),
            host_peer: Some(flow.client.to_string()),
            state: "active".into(),
            age_ms: (now - flow.opened).total_millis(),
            to_host: DirectionReport {
                bytes: flow.to_client.bytes,
                segments: Some(flow.to_client.packets),
                queued: None,
            },
            to_guest: DirectionReport {
                bytes: flow.to_guest.bytes,
                segments: Some(flow.to_guest.packets),
                queued: None,
            },
            ..FlowReport::default()
        })
    }

    /// Forgets every flow of a removed forward.
    pub fn remove_forward(&mut self, forward: u64) {
        let gone: Vec<usize> = self
            .flows
            .iter()
            .filter(|(_, f)| f.forward == forward)
            .map(|(i, _)| i)
            .collect();
        for index in gone {
            self.remove(index);
        }
    }

    /// The earliest expiry to check.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|&(d, _)| d)
    }

    /// Ends the flows idle for [`UDP_FLOW_IDLE`]; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        while let Some(&(deadline, index)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            let flow = &mut self.flows[index];
            let due = flow.last + UDP_FLOW_IDLE;
            if due > now {
                flow.deadline = due;
                self.timers.insert((due, index));
            } else {
                self.remove_untimed(index);
                expired += 1;
            }
        }
        expired
    }

    fn remove(&mut self, index: usize) {
        let deadline = self.flows[index].deadline;
        self.timers.remove(&(deadline, index));
        self.remove_untimed(index);
    }

    fn remove_untimed(&mut self, index: usize) {
        let flow = self.flows.remove(index);
        self.ended_bytes.0 += flow.to_guest.bytes;
        self.ended_bytes.1 += flow.to_client.bytes;
        self.by_client.remove(&(flow.forward, flow.client));
        self.by_guest.remove(&(flow.guest, flow.peer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> Instant {
        Instant::from_secs(secs as i64)
    }

    const GUEST: &str = "10.0.2.100:53";
    const GW: &str = "10.0.2.2";

    fn gw(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(GW.parse().unwrap(), port)
    }

    #[test]
    fn answers_find_the_client_and_idle_flows_expire() {
        let mut flows = UdpFlows::default();
        let guest: SocketAddrV4 = GUEST.parse().unwrap();
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let peer = flows
            .on_client_datagram(t(0), 1, client, guest, gw(40000), true)
            .unwrap();
        assert_eq!(peer, gw(40000));
        assert_eq!(
            flows.on_guest_datagram(t(10), guest, peer),
            Some((1, client))
        );
        // Activity at 10 s keeps it past the first deadline.
        assert_eq!(flows.expire(t(120)), 0);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows.next_deadline(), Some(t(130)));
        assert_eq!(flows.expire(t(130)), 1);
        assert_eq!(flows.len(), 0);
        assert_eq!(flows.on_guest_datagram(t(131), guest, peer), None);
    }

    #[test]
    fn a_busy_gateway_port_is_renumbered() {
        let mut flows = UdpFlows::default();
        let guest: SocketAddrV4 = GUEST.parse().unwrap();
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let pa = flows
            .on_client_datagram(t(0), 1, a, guest, gw(5000), true)
            .unwrap();
        let pb = flows
            .on_client_datagram(t(0), 1, b, guest, gw(5000), true)
            .unwrap();
        assert_ne!(pa, pb);
        assert_eq!(flows.on_guest_datagram(t(1), guest, pb), Some((1, b)));
        // A real client address is never renumbered.
        let real: SocketAddrV4 = "10.9.0.1:7".parse().unwrap();
        assert!(
            flows
                .on_client_datagram(t(0), 1, "10.9.0.1:7".parse().unwrap(), guest, real, false)
                .is_some()
        );
        assert!(
            flows
                .on_client_datagram(t(0), 2, "10.9.0.1:7".parse().unwrap(), guest, real, false)
                .is_none()
        );
    }

    #[test]
    fn removing_a_forward_ends_its_flows_and_the_table_is_bounded() {
        let mut flows = UdpFlows::default();
        let guest: SocketAddrV4 = GUEST.parse().unwrap();
        for i in 0..MAX_UDP_FLOWS as u32 {
            let client = SocketAddr::new(std::net::Ipv4Addr::from(0x0b00_0000 + i).into(), 9);
            let SocketAddr::V4(peer) = client else {
                unreachable!()
            };
            assert!(
                flows
                    .on_client_datagram(t(0), u64::from(i % 2), client, guest, peer, false)
                    .is_some()
            );
        }
        let extra: SocketAddr = "12.0.0.1:9".parse().unwrap();
        assert!(
            flows
                .on_client_datagram(t(0), 0, extra, guest, "12.0.0.1:9".parse().unwrap(), false)
                .is_none()
        );
        flows.remove_forward(1);
        assert_eq!(flows.len(), MAX_UDP_FLOWS / 2);
        assert_eq!(flows.timers.len(), MAX_UDP_FLOWS / 2);
    }
}
