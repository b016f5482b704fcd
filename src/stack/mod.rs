//! The guest-facing TCP/IP stack: smoltcp plus the decisions smoltcp cannot make for us.
//!
//! Sans-IO: frames come in through [`FrameDevice`], time is a parameter, and frames to send
//! wait in the device's queue. Nothing here opens a socket or reads a clock.
//!
//! Theory of operation. smoltcp's interface runs in "any IP" mode with a default route via
//! our own gateway address, so it accepts traffic for every destination, which is what a
//! NAT needs. But `Interface::poll` walks every socket it is given, so instead of one big
//! socket set we demultiplex first: [`Stack::classify`] reads the 5-tuple of each frame and
//! the caller hands `poll` only the one-socket set of that flow (see `flow/`). The cost per
//! frame therefore does not grow with the number of flows. Frames that belong to no flow go
//! to smoltcp with an empty set, which answers ARP for our addresses and resets stray TCP.
//!
//! smoltcp would also answer ARP and ping for *every* address in any-IP mode; a guest that
//! probes for a free address (DHCP clients do) must not get an answer for an address that
//! nobody holds. So ARP is filtered to N+2 and N+3, and echo replies for those two are made
//! here (module `icmp`), not by smoltcp.

mod device;
mod dhcp;
mod emit;
mod icmp;
mod inbound;
mod ipv6;
mod segments;
mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress,
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, IpCidr, IpProtocol, Ipv4Packet, TcpPacket,
    UdpPacket,
};

pub use device::{ETHERNET_HEADER_LEN, FrameDevice};

/// The DNS port at N+3.
pub const DNS_PORT: u16 = 53;
pub use inbound::{MAX_NEIGHBORS, MAX_PENDING_UDP, UdpSend};
pub use segments::SegmentStats;
pub use tcp::{GUEST_CONNECT_TIMEOUT, GuestSocket};

use crate::config::NetConfig;
use crate::stats::{Counters, DropReason};

/// One TCP connection or UDP flow between the guest and a remote endpoint, as the guest
/// addresses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub guest: SocketAddr,
    pub remote: SocketAddr,
}

/// Why a datagram could not be delivered, for the ICMP (or ICMPv6) error the guest gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// No route (ENETUNREACH).
    Net,
    /// Host unreachable (EHOSTUNREACH).
    Host,
    /// Port unreachable (ECONNREFUSED).
    Port,
}

/// What the caller must do with the frame just received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// A TCP segment of flow `key`; `opens` when it is a bare SYN (a new connection).
    /// The frame stays in the device until [`Stack::deliver`].
    Tcp { key: FlowKey, opens: bool },
    /// A UDP datagram of flow `key`; its payload is [`Stack::received_payload`].
    Udp { key: FlowKey },
    /// An ICMP echo request to a remote host; its data is [`Stack::received_payload`].
    Echo(EchoRequest),
    /// The stack dealt with the frame itself (ARP, ping to the gateway, a refusal).
    Handled,
    /// The frame was dropped and counted.
    Dropped(DropReason),
}

/// An ICMP echo request from the guest to an address that is not ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoRequest {
    pub guest: IpAddr,
    pub remote: IpAddr,
    pub ident: u16,
    pub seq_no: u16,
}

/// Guest addresses whose MAC we remember for frames we originate (one guest normally has
/// one or two); past this the table starts over.
const GUEST_MAC_LIMIT: usize = 16;

/// The guest-facing stack of one tapsplice instance.
pub struct Stack {
    cfg: NetConfig,
    iface: Interface,
    device: FrameDevice,
    /// The socket set for frames that belong to no flow.
    no_sockets: SocketSet<'static>,
    dhcp: dhcp::DhcpServer,
    /// The MAC each guest IPv6 address last sent from, for UDP and ICMP frames we build
    /// (IPv4 addresses are in `inbound`'s neighbor table).
    guest_macs: HashMap<IpAddr, EthernetAddress>,
    /// A guest IPv6 address seen for the first time, to be taught to smoltcp's neighbor cache.
    new_neighbor: Option<(std::net::Ipv6Addr, EthernetAddress)>,
    /// When the next unsolicited router advertisement is due (with `-6`).
    next_router_advert: Option<Instant>,
    /// Where the UDP payload or echo data of the received frame is.
    rx_payload: Range<usize>,
    pub counters: Counters,
    /// Guest MACs and datagrams for port forwards (module `inbound`).
    inbound: inbound::Inbound,
}

impl Stack {
    pub fn new(cfg: NetConfig, now: Instant) -> Self {
        let mut device = FrameDevice::new(cfg.mtu);
        let mac = EthernetAddress(cfg.gateway_mac());
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = random_seed();
        let mut iface = Interface::new(config, &mut device, now);
        iface.update_ip_addrs(|addrs| {
            // Capacity is SMOLTCP_IFACE_MAX_ADDR_COUNT (8, .cargo/config.toml).
            for own in [cfg.gateway(), cfg.dns()] {
                let _ = addrs.push(IpCidr::new(own.into(), cfg.prefix_len));
            }
            if cfg.enable_ipv6 {
                let _ = addrs.push(IpCidr::new(cfg.router_link_local().into(), 64));
                for own in [cfg.gateway6(), cfg.dns6()] {
                    let _ = addrs.push(IpCidr::new(own.into(), crate::config::IPV6_PREFIX_LEN));
                }
            }
        });
        iface.set_any_ip(true);
        // The route's gateway must be one of our own addresses for any-IP to accept a
        // destination; ours is N+2 (and fd00::2).
        let _ = iface.routes_mut().add_default_ipv4_route(cfg.gateway());
        if cfg.enable_ipv6 {
            let _ = iface.routes_mut().add_default_ipv6_route(cfg.gateway6());
        }
        let cfg_ipv6 = cfg.enable_ipv6;
        Stack {
            cfg,
            iface,
            device,
            no_sockets: SocketSet::new(Vec::new()),
            dhcp: dhcp::DhcpServer::default(),
            guest_macs: HashMap::new(),
            new_neighbor: None,
            next_router_advert: cfg_ipv6.then_some(now),
            rx_payload: 0..0,
            counters: Counters::default(),
            inbound: inbound::Inbound::default(),
        }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Where the event loop reads the next frame from the TAP.
    pub fn rx_buffer(&mut self) -> &mut [u8] {
        self.device.rx_buffer()
    }

    /// Looks at the frame the event loop just read (`len` bytes of [`Stack::rx_buffer`]) and
    /// says whose it is. ARP and pings for our own addresses are answered here.
    pub fn classify(&mut self, now: Instant, len: usize) -> Ingress {
        self.device.set_received(len);
        self.counters.frame_in(len);
        let verdict = self.classify_received(now);
        if let Ingress::Dropped(reason) = verdict {
            self.device.discard_received();
            self.counters.drop(reason);
        }
        verdict
    }

    fn classify_received(&mut self, now: Instant) -> Ingress {
        let Some(frame) = self.device.received() else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => self.classify_arp(now),
            EthernetProtocol::Ipv4 => self.classify_ipv4(now),
            EthernetProtocol::Ipv6 if self.cfg.enable_ipv6 => self.classify_ipv6(now),
            _ => Ingress::Dropped(DropReason::Unsupported),
        }
    }

    fn classify_arp(&mut self, now: Instant) -> Ingress {
        let frame = self.device.received().unwrap_or_default();
        let payload = &frame[ETHERNET_HEADER_LEN.min(frame.len())..];
        let Ok(repr) = ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        let ArpRepr::EthernetIpv4 {
            target_protocol_addr,
            source_protocol_addr,
            source_hardware_addr,
            ..
        } = repr
        else {
            return Ingress::Dropped(DropReason::Unsupported);
        };
        self.learn_neighbor(source_protocol_addr, source_hardware_addr);
        if !self.cfg.is_own_address(target_protocol_addr) {
            return Ingress::Dropped(DropReason::NotOurs);
        }
        self.deliver(now, None);
        Ingress::Handled
    }

    fn classify_ipv4(&mut self, now: Instant) -> Ingress {
        let frame = self.device.received().unwrap_or_default();
        let Some(eth) = EthernetFrame::new_checked(frame).ok() else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        let guest_mac = eth.src_addr();
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        if !ip.verify_checksum() {
            return Ingress::Dropped(DropReason::BadChecksum);
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            return Ingress::Dropped(DropReason::Unsupported);
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let l4_at = ETHERNET_HEADER_LEN + usize::from(ip.header_len());
        match ip.next_header() {
            IpProtocol::Tcp => self.classify_tcp(src.into(), dst.into(), l4_at),
            IpProtocol::Udp => {
                self.remember_guest(src.into(), guest_mac);
                self.classify_udp(src.into(), dst.into(), l4_at)
            }
            IpProtocol::Icmp => {
                self.remember_guest(src.into(), guest_mac);
                self.classify_icmp(src, dst, l4_at)
            }
            _ => {
                // smoltcp answers "protocol unreachable", so the guest fails fast.
                self.deliver(now, None);
                Ingress::Handled
            }
        }
    }

    /// The layer-4 bytes of the received frame, from `at` to the end of its IP datagram
    /// (whose headers were checked before).
    fn l4(&self, at: usize) -> &[u8] {
        let frame = self.device.received().unwrap_or_default();
        let ip = &frame[ETHERNET_HEADER_LEN.min(frame.len())..];
        let ip_len = match ip.first().map(|b| b >> 4) {
            Some(4) => Ipv4Packet::new_checked(ip).map(|p| usize::from(p.total_len())),
            Some(6) => smoltcp::wire::Ipv6Packet::new_checked(ip)
                .map(|p| ipv6::HEADER_LEN + usize::from(p.payload_len())),
            _ => Ok(0),
        };
        let ip_end = ETHERNET_HEADER_LEN + ip_len.unwrap_or(0);
        frame.get(at..ip_end).unwrap_or_default()
    }

    fn classify_tcp(&mut self, src: IpAddr, dst: IpAddr, at: usize) -> Ingress {
        let Ok(tcp) = TcpPacket::new_checked(self.l4(at)) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        let key = FlowKey {
            guest: SocketAddr::new(src, tcp.src_port()),
            remote: SocketAddr::new(dst, tcp.dst_port()),
        };
        let opens = tcp.syn() && !tcp.ack() && !tcp.rst();
        if !opens {
            // A SYN-ACK answers a forwarded connection: its sender is a guest address.
            if tcp.syn() {
                self.learn_from_received_ipv4();
            }
            return Ingress::Tcp { key, opens };
        }
        // A SYN makes a host connection, so check it whole before believing it.
        if !tcp.verify_checksum(&src.into(), &dst.into()) {
            return Ingress::Dropped(DropReason::BadChecksum);
        }
        self.learn_from_received_ipv4();
        if let Some(verdict) = self.refuse_by_policy(dst, key.remote.port()) {
            return verdict;
        }
        Ingress::Tcp { key, opens }
    }

    fn classify_udp(&mut self, src: IpAddr, dst: IpAddr, at: usize) -> Ingress {
        let Ok(udp) = UdpPacket::new_checked(self.l4(at)) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        // A zero checksum means "none" in IPv4.
        if udp.checksum() != 0 && !udp.verify_checksum(&src.into(), &dst.into()) {
            return Ingress::Dropped(DropReason::BadChecksum);
        }
        let (src_port, dst_port) = (udp.src_port(), udp.dst_port());
        let payload_len = udp.payload().len();
        if dst_port == dhcp::SERVER_PORT && src_port == dhcp::CLIENT_PORT && src.is_ipv4() {
            return if self.dhcp.handle(&mut self.device, &self.cfg) {
                Ingress::Handled
            } else {
                Ingress::Dropped(DropReason::Malformed)
            };
        }
        if !is_unicast(dst) || src.is_unspecified() {
            return Ingress::Dropped(DropReason::Unsupported);
        }
        if src.is_ipv4() {
            self.learn_from_received_ipv4();
        }
        // No policy here: the datagram may answer a port forward's client (at N+2, say),
        // which only the caller knows; see [`Stack::refuse_datagram_by_policy`].
        let payload_at = at + emit::UDP_HEADER_LEN;
        self.rx_payload = payload_at..payload_at + payload_len;
        Ingress::Udp {
            key: FlowKey {
                guest: SocketAddr::new(src, src_port),
                remote: SocketAddr::new(dst, dst_port),
            },
        }
    }

    fn classify_icmp(&mut self, src: Ipv4Addr, dst: Ipv4Addr, at: usize) -> Ingress {
        if self.cfg.is_own_address(dst) {
            return if icmp::reply_echo(&mut self.device, &self.cfg) {
                Ingress::Handled
            } else {
                Ingress::Dropped(DropReason::Unsupported)
            };
        }
        let Ok(packet) = Icmpv4Packet::new_checked(self.l4(at)) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        if !packet.verify_checksum() {
            return Ingress::Dropped(DropReason::BadChecksum);
        }
        if packet.msg_type() != Icmpv4Message::EchoRequest || packet.msg_code() != 0 {
            return Ingress::Dropped(DropReason::Unsupported);
        }
        if !is_unicast(dst.into()) {
            return Ingress::Dropped(DropReason::Unsupported);
        }
        let data_at = at + emit::ICMP_HEADER_LEN;
        let request = EchoRequest {
            guest: src.into(),
            remote: dst.into(),
            ident: packet.echo_ident(),
            seq_no: packet.echo_seq_no(),
        };
        let data_len = packet.data().len();
        self.rx_payload = data_at..data_at + data_len;
        Ingress::Echo(request)
    }

    /// What the configuration says about a new connection or datagram to `dst:port`:
    /// `None` to let it through.
    fn refuse_by_policy(&mut self, dst: IpAddr, port: u16) -> Option<Ingress> {
        if self.cfg.is_gateway(dst) && self.cfg.disable_host_loopback {
            // What slirp4netns clients see: connect() fails at once, ENETUNREACH.
            match dst {
                IpAddr::V4(gateway) => icmp::reply_unreachable(
                    &mut self.device,
                    &self.cfg,
                    gateway,
                    Icmpv4DstUnreachable::NetUnreachable,
                ),
                IpAddr::V6(_) => ipv6::reply_no_route(&mut self.device, &self.cfg),
            }
            self.device.discard_received();
            self.counters.refused_host_loopback += 1;
            return Some(Ingress::Handled);
        }
        if self.cfg.is_dns(dst) && port == DNS_PORT && self.cfg.disable_dns {
            // `--disable-dns`: no answer at all, as slirp4netns.
            return Some(Ingress::Dropped(DropReason::Disabled));
        }
        None
    }

    /// Applies the configuration to the held UDP datagram of `key`, which opens a NAT flow:
    /// with `--disable-host-loopback` the gateway answers ICMP net unreachable, with
    /// `--disable-dns` the DNS address says nothing. True when it was refused (and handled).
    pub fn refuse_datagram_by_policy(&mut self, key: FlowKey) -> bool {
        match self.refuse_by_policy(key.remote.ip(), key.remote.port()) {
            None => false,
            Some(Ingress::Dropped(reason)) => {
                self.device.discard_received();
                self.counters.drop(reason);
                true
            }
            Some(_) => true,
        }
    }

    /// Notes the MAC `addr` sends from; true when the address is new (or moved).
    fn remember_guest(&mut self, addr: IpAddr, mac: EthernetAddress) -> bool {
        if let IpAddr::V4(v4) = addr {
            // IPv4 neighbors live in one table, shared with port forwards (`inbound`).
            let known = self.guest_mac(v4) == Some(mac);
            self.learn_neighbor(v4, mac);
            return !known;
        }
        if self.guest_macs.get(&addr) == Some(&mac) {
            return false;
        }
        if self.guest_macs.len() >= GUEST_MAC_LIMIT {
            self.guest_macs.clear();
        }
        self.guest_macs.insert(addr, mac);
        true
    }

    /// The UDP payload or ICMP echo data of the frame [`Stack::classify`] just looked at.
    pub fn received_payload(&self) -> &[u8] {
        self.device
            .received()
            .and_then(|frame| frame.get(self.rx_payload.clone()))
            .unwrap_or_default()
    }

    /// Forgets the received frame once its payload was taken.
    pub fn consume_received(&mut self) {
        self.device.discard_received();
    }

    fn link_to(&self, guest: IpAddr) -> emit::Link {
        emit::Link {
            src: EthernetAddress(self.cfg.gateway_mac()),
            // Before the guest sent anything we cannot know its MAC; a broadcast frame with a
            // unicast IP destination still reaches its IP layer.
            dst: match guest {
                IpAddr::V4(v4) => self.guest_mac(v4),
                IpAddr::V6(_) => self.guest_macs.get(&guest).copied(),
            }
            .unwrap_or(EthernetAddress::BROADCAST),
        }
    }

    /// Whether a frame can be queued for the TAP now; a flow with data waits otherwise.
    pub fn can_send(&self) -> bool {
        self.device.has_tx_room()
    }

    /// The most UDP payload one frame to `dst` carries.
    pub fn udp_payload_capacity(&self, dst: IpAddr) -> usize {
        emit::udp_payload_capacity(&self.device, dst)
    }

    /// Sends a UDP datagram `from` -> `to` (the guest) whose payload `fill` writes in place
    /// (returning its length, or `None` to send nothing). Returns the payload length.
    pub fn send_udp(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        let link = self.link_to(to.ip());
        let sent = emit::udp(&mut self.device, link, from, to, fill);
        if sent.is_none() {
            self.counters.drop(DropReason::Unsupported);
        }
        sent
    }

    /// Tells the guest that its datagrams of flow `key` cannot be delivered (an ICMP error
    /// that arrived on the host socket after the datagram was sent).
    pub fn send_udp_unreachable(&mut self, key: FlowKey, reason: Unreachable) {
        let link = self.link_to(key.guest.ip());
        match (key.guest, key.remote) {
            (SocketAddr::V4(guest), SocketAddr::V4(remote)) => {
                let reason = match reason {
                    Unreachable::Net => Icmpv4DstUnreachable::NetUnreachable,
                    Unreachable::Host => Icmpv4DstUnreachable::HostUnreachable,
                    Unreachable::Port => Icmpv4DstUnreachable::PortUnreachable,
                };
                let quote = emit::udp_quote(guest, remote);
                emit::unreachable(
                    &mut self.device,
                    link,
                    (*remote.ip(), *guest.ip()),
                    reason,
                    &quote,
                );
            }
            (SocketAddr::V6(guest), SocketAddr::V6(remote)) => {
                ipv6::send_udp_unreachable(&mut self.device, link, guest, remote, reason)
            }
            _ => {}
        }
    }

    /// Sends an echo reply for `request` whose data `fill` writes in place.
    pub fn send_echo_reply(
        &mut self,
        request: EchoRequest,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        let link = self.link_to(request.guest);
        emit::echo_reply(
            &mut self.device,
            link,
            (request.remote, request.guest),
            (request.ident, request.seq_no),
            fill,
        )
    }

    /// Gives the received frame to smoltcp together with the socket set of its flow (or no
    /// sockets at all), and lets the flow's sockets send what they have.
    pub fn deliver(&mut self, now: Instant, flow: Option<&mut GuestSocket>) {
        match flow {
            Some(guest) => {
                if let Some(frame) = self.device.received() {
                    guest.wire.on_ingress(frame, now);
                }
                self.poll_flow(now, guest);
            }
            None => {
                self.iface.poll(now, &mut self.device, &mut self.no_sockets);
            }
        }
    }

    /// Gives the received frame to the flow's socket without letting it answer yet: ACKs
    /// and window updates wait for [`Stack::poll_flow`], which the caller runs once per
    /// batch of frames, so a burst of segments costs one ACK and one host write.
    pub fn deliver_batched(&mut self, now: Instant, guest: &mut GuestSocket) {
        if let Some(frame) = self.device.received() {
            guest.wire.on_ingress(frame, now);
        }
        let queued = self.device.tx_pending();
        self.iface
            .poll_ingress_single(now, &mut self.device, guest.set_mut());
        self.device
            .frames_since(queued)
            .for_each(|frame| guest.wire.on_egress(frame, now));
    }

    /// Lets the sockets of one flow send what they have (data, ACKs, window updates, FIN).
    pub fn poll_flow(&mut self, now: Instant, guest: &mut GuestSocket) {
        let queued = self.device.tx_pending();
        self.iface.poll(now, &mut self.device, guest.set_mut());
        self.device
            .frames_since(queued)
            .for_each(|frame| guest.wire.on_egress(frame, now));
    }

    /// When the flow's sockets next need [`Stack::poll_flow`] for a timer (retransmission,
    /// delayed close), if ever.
    pub fn poll_at(&mut self, now: Instant, guest: &GuestSocket) -> Option<Instant> {
        self.iface.poll_at(now, guest.set())
    }

    /// A socket that takes over the guest's connection attempt `key`. Its SYN-ACK is held
    /// back until [`GuestSocket::accept`].
    pub fn open_guest_socket(&self, key: FlowKey) -> GuestSocket {
        GuestSocket::listen(key)
    }

    /// The oldest frame waiting to be written to the TAP.
    pub fn next_tx(&self) -> Option<&[u8]> {
        self.device.front_tx()
    }

    /// Marks the frame from [`Stack::next_tx`] as written.
    pub fn tx_done(&mut self) {
        if let Some(len) = self.device.front_tx().map(<[u8]>::len) {
            self.counters.frame_out(len);
        }
        self.device.pop_tx();
    }

    pub fn tx_pending(&self) -> usize {
        self.device.tx_pending()
    }
}

/// Whether `addr` names one host (not broadcast, multicast or unspecified).
fn is_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => !(v4.is_broadcast() || v4.is_multicast() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_multicast() || v6.is_unspecified()),
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod inbound_tests;
