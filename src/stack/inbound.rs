//! What the stack does for port forwards: traffic that starts on the host side and goes *into*
//! the guest.
//!
//! TCP: a forwarded connection is a smoltcp socket that `connect()`s to the guest from the
//! address the guest should see as its peer (the client's own address, or N+2 for clients on
//! the host's loopback). In any-IP mode smoltcp sends from any source address, so the socket
//! simply names it as its local endpoint. From then on it is an ordinary flow (see `flow/`).
//!
//! UDP: datagrams to the guest are built here, with smoltcp's wire types, and queued on the
//! device like the stack's own replies; IPv4 fragments are made when a datagram is larger
//! than the MTU. That needs the guest's MAC, which smoltcp keeps to itself, so the stack
//! remembers the MAC of each guest address it hears from (ARP, and IPv4 frames that open
//! something: SYNs and datagrams). A datagram for an address not heard from yet waits in a
//! short queue while an ARP request (from N+2) goes out; the answer releases it.
//!
//! The same news, "a guest address became reachable", is what a forwarded TCP connection
//! waiting on smoltcp's ARP needs: smoltcp then holds its SYN for up to a second unless the
//! socket is polled again. [`Stack::take_neighbor_news`] tells the caller to do that.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol,
    Ipv4Packet, Ipv4Repr, UDP_HEADER_LEN, UdpPacket, UdpRepr,
};

use super::device::ETHERNET_HEADER_LEN;
use super::{FlowKey, GuestSocket, Stack};

/// Guest addresses whose MAC is remembered. A guest is one kernel behind one TAP; a few
/// addresses (DHCP, static, aliases) are all there ever is. Past this, the oldest is forgotten.
pub const MAX_NEIGHBORS: usize = 64;
/// Datagrams held while the guest's MAC is being asked for.
pub const MAX_PENDING_UDP: usize = 32;
/// How long a held datagram waits for the guest's ARP answer before it is dropped.
const PENDING_UDP_TTL: Duration = Duration::from_secs(3);
/// Least time between two ARP requests for the same address.
const ARP_RETRY: Duration = Duration::from_millis(500);
/// IPv4 header without options.
const IPV4_HEADER_LEN: usize = 20;
/// Hop limit of packets the stack originates.
const HOP_LIMIT: u8 = 64;

/// What happened to a datagram given to [`Stack::send_udp_to_guest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpSend {
    /// Queued for the TAP.
    Sent,
    /// Held until the guest answers ARP.
    Pending,
    /// Dropped: the queue for the TAP or the ARP wait queue is full, or it is too large.
    Dropped,
}

struct PendingDatagram {
    since: Instant,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: Vec<u8>,
}

/// MACs of guest addresses, and datagrams waiting for one.
#[derive(Default)]
pub struct Inbound {
    neighbors: HashMap<Ipv4Addr, (EthernetAddress, u64)>,
    /// Insertion counter, to forget the oldest neighbor when the table is full.
    learned: u64,
    /// A neighbor was learned or changed since [`Stack::take_neighbor_news`].
    news: bool,
    pending: VecDeque<PendingDatagram>,
    last_arp: Option<(Ipv4Addr, Instant)>,
    ip_ident: u16,
    /// A whole UDP datagram (header and payload) while it is cut into fragments.
    scratch: Vec<u8>,
}

impl Stack {
    /// A socket that dials the guest for a forwarded connection `key` (`key.guest` is the
    /// guest's listening endpoint, `key.remote` the peer the guest will see). The SYN goes
    /// out at the next [`Stack::poll_flow`]. `None` if smoltcp refuses the endpoints.
    pub fn connect_guest_socket(&mut self, key: FlowKey) -> Option<GuestSocket> {
        GuestSocket::connect(self.iface.context(), key)
    }

    /// True once after a guest address became reachable (its MAC was learned or changed).
    pub fn take_neighbor_news(&mut self) -> bool {
        std::mem::take(&mut self.inbound.news)
    }

    /// The MAC the guest uses for `ip`, if the stack has heard from it.
    pub fn guest_mac(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.inbound.neighbors.get(&ip).map(|&(mac, _)| mac)
    }

    /// Sends one UDP datagram from `src` (an address the guest sees as a peer) to the guest
    /// endpoint `dst`.
    pub fn send_udp_to_guest(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
    ) -> UdpSend {
        if UDP_HEADER_LEN + payload.len() > usize::from(u16::MAX) - IPV4_HEADER_LEN {
            return UdpSend::Dropped;
        }
        if let Some(mac) = self.guest_mac(*dst.ip()) {
            return self.emit_udp(mac, src, dst, payload);
        }
        let inbound = &mut self.inbound;
        while inbound
            .pending
            .front()
            .is_some_and(|p| now >= p.since + PENDING_UDP_TTL)
        {
            inbound.pending.pop_front();
        }
        if inbound.pending.len() >= MAX_PENDING_UDP {
            return UdpSend::Dropped;
        }
        inbound.pending.push_back(PendingDatagram {
            since: now,
            src,
            dst,
            payload: payload.to_vec(),
        });
        let due = match inbound.last_arp {
            Some((ip, at)) => ip != *dst.ip() || now >= at + ARP_RETRY,
            None => true,
        };
        if due {
            inbound.last_arp = Some((*dst.ip(), now));
            self.emit_arp_request(*dst.ip());
        }
        UdpSend::Pending
    }

    /// Remembers that the guest uses `mac` for `ip` (a frame from it said so), and releases
    /// datagrams that waited for it.
    pub(super) fn learn_neighbor(&mut self, ip: Ipv4Addr, mac: EthernetAddress) {
        if !mac.is_unicast() || !self.in_guest_network(ip) || self.cfg.is_own_address(ip) {
            return;
        }
        let inbound = &mut self.inbound;
        if inbound.neighbors.get(&ip).map(|&(m, _)| m) == Some(mac) {
            return;
        }
        if inbound.neighbors.len() >= MAX_NEIGHBORS
            && !inbound.neighbors.contains_key(&ip)
            && let Some(oldest) = inbound
                .neighbors
                .iter()
                .min_by_key(|(_, (_, n))| *n)
                .map(|(ip, _)| *ip)
        {
            inbound.neighbors.remove(&oldest);
        }
        inbound.learned += 1;
        inbound.neighbors.insert(ip, (mac, inbound.learned));
        inbound.news = true;
        if inbound.pending.iter().any(|p| *p.dst.ip() == ip) {
            let (ready, waiting): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut inbound.pending)
                .into_iter()
                .partition(|p| *p.dst.ip() == ip);
            self.inbound.pending = waiting;
            for p in ready {
                self.emit_udp(mac, p.src, p.dst, &p.payload);
            }
        }
    }

    /// Learns the sender of the frame held in the device, when it is an IPv4 frame from the
    /// guest's network.
    pub(super) fn learn_from_received_ipv4(&mut self) {
        let Some(frame) = self.device.received() else {
            return;
        };
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            return;
        };
        let (src, mac) = (ip.src_addr(), eth.src_addr());
        self.learn_neighbor(src, mac);
    }

    fn in_guest_network(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.cfg.netmask());
        u32::from(ip) & mask == u32::from(self.cfg.network)
            && ip != self.cfg.network
            && u32::from(ip) | mask != u32::MAX
    }

    fn emit_arp_request(&mut self, target: Ipv4Addr) {
        let gateway_mac = EthernetAddress(self.cfg.gateway_mac());
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: gateway_mac,
            source_protocol_addr: self.cfg.gateway(),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        let len = ETHERNET_HEADER_LEN + repr.buffer_len();
        self.device.emit(len, |out| {
            let mut eth = EthernetFrame::new_unchecked(&mut *out);
            eth.set_dst_addr(EthernetAddress::BROADCAST);
            eth.set_src_addr(gateway_mac);
            eth.set_ethertype(EthernetProtocol::Arp);
            repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
        });
    }

    /// Builds the datagram, in IPv4 fragments if it exceeds the MTU, and queues its frames.
    fn emit_udp(
        &mut self,
        dst_mac: EthernetAddress,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
    ) -> UdpSend {
        let udp_len = UDP_HEADER_LEN + payload.len();
        let max_fragment = (self.cfg.mtu - IPV4_HEADER_LEN) & !7;
        let fragments = udp_len.div_ceil(max_fragment).max(1);
        if self.device.tx_pending() + fragments > super::device::TX_QUEUE_LIMIT {
            return UdpSend::Dropped;
        }
        let scratch = &mut self.inbound.scratch;
        scratch.clear();
        scratch.resize(udp_len, 0);
        let repr = UdpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
        };
        let (src_ip, dst_ip) = ((*src.ip()).into(), (*dst.ip()).into());
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut scratch[..]),
            &src_ip,
            &dst_ip,
            payload.len(),
            |buf| buf.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
        self.inbound.ip_ident = self.inbound.ip_ident.wrapping_add(1);
        let ident = self.inbound.ip_ident;
        let gateway_mac = EthernetAddress(self.cfg.gateway_mac());
        let mut offset = 0;
        while offset < udp_len {
            let chunk = (udp_len - offset).min(max_fragment);
            let more = offset + chunk < udp_len;
            let data = &self.inbound.scratch[offset..offset + chunk];
            let ip_repr = Ipv4Repr {
                src_addr: *src.ip(),
                dst_addr: *dst.ip(),
                next_header: IpProtocol::Udp,
                payload_len: chunk,
                hop_limit: HOP_LIMIT,
            };
            let len = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + chunk;
            self.device.emit(len, |out| {
                let mut eth = EthernetFrame::new_unchecked(&mut *out);
                eth.set_dst_addr(dst_mac);
                eth.set_src_addr(gateway_mac);
                eth.set_ethertype(EthernetProtocol::Ipv4);
                let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
                ip_repr.emit(&mut ip, &ChecksumCapabilities::ignored());
                ip.set_ident(ident);
                ip.set_dont_frag(false);
                ip.set_more_frags(more);
                ip.set_frag_offset(offset as u16);
                ip.fill_checksum();
                ip.payload_mut()[..chunk].copy_from_slice(data);
            });
            offset += chunk;
        }
        UdpSend::Sent
    }
}
