//! IPv6 for the guest (`-6`): the prefix fd00::/64 announced by router advertisements for
//! SLAAC, the router at fe80::2 / fd00::2 (the host's ::1), DNS at fd00::3, and the same
//! TCP, UDP and echo NAT as IPv4.
//!
//! As with ARP, smoltcp in any-IP mode would answer neighbor solicitations for every
//! address, which breaks the guest's duplicate address detection; only solicitations for
//! our own addresses reach it. Router advertisements are ours (smoltcp is a host, not a
//! router): on every router solicitation, once at start and then every ten minutes.
//!
//! smoltcp learns neighbors only from NDP, but a guest talks to remote hosts through the
//! router's link-local address, so its global address may never appear in a solicitation
//! smoltcp sees. Its first SYN-ACK would then wait for address resolution. So when a guest
//! address shows up for the first time, the stack teaches smoltcp its MAC with a neighbor
//! advertisement built from what the frame itself showed ([`Stack::teach_neighbors`]).

use std::net::{Ipv6Addr, SocketAddrV6};

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv6DstUnreachable, Icmpv6Message,
    Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags,
    NdiscPrefixInfoFlags, NdiscPrefixInformation, NdiscRepr, NdiscRouterFlags, RawHardwareAddress,
};

use super::device::{ETHERNET_HEADER_LEN, FrameDevice};
use super::emit::{self, Link};
use super::{DropReason, EchoRequest, Ingress, Stack, Unreachable};
use crate::config::{IPV6_PREFIX, IPV6_PREFIX_LEN, NetConfig};

/// IPv6 header length (no extension headers are carried).
pub const HEADER_LEN: usize = 40;
/// Unsolicited router advertisements, at most this far apart.
const ROUTER_ADVERT_INTERVAL: Duration = Duration::from_secs(600);
/// How long the guest may use us as its default router (3 x the interval, RFC 4861).
const ROUTER_LIFETIME: Duration = Duration::from_secs(1800);
/// Lifetimes of the SLAAC prefix.
const PREFIX_VALID: Duration = Duration::from_secs(86_400);
const PREFIX_PREFERRED: Duration = Duration::from_secs(14_400);
/// Largest ICMPv6 error message (the IPv6 minimum MTU).
const MIN_MTU: usize = 1280;
/// ff02::1, all nodes.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The Ethernet multicast address of an IPv6 multicast group (33:33 + low 32 bits).
fn multicast_mac(group: Ipv6Addr) -> EthernetAddress {
    let o = group.octets();
    EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

impl Stack {
    pub(super) fn classify_ipv6(&mut self, now: Instant) -> Ingress {
        let frame = self.device.received().unwrap_or_default();
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        let guest_mac = eth.src_addr();
        let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let at = ETHERNET_HEADER_LEN + HEADER_LEN;
        match ip.next_header() {
            IpProtocol::Tcp => {
                self.note_guest(src, guest_mac);
                self.classify_tcp(src.into(), dst.into(), at)
            }
            IpProtocol::Udp => {
                self.note_guest(src, guest_mac);
                self.classify_udp(src.into(), dst.into(), at)
            }
            IpProtocol::Icmpv6 => self.classify_icmpv6(now, (src, dst), guest_mac, at),
            // Extension headers (hop-by-hop for MLD reports, fragments) are not carried.
            _ => Ingress::Dropped(DropReason::Unsupported),
        }
    }

    fn note_guest(&mut self, addr: Ipv6Addr, mac: EthernetAddress) {
        if !addr.is_unspecified() && self.remember_guest(addr.into(), mac) {
            self.new_neighbor = Some((addr, mac));
        }
    }

    fn classify_icmpv6(
        &mut self,
        now: Instant,
        (src, dst): (Ipv6Addr, Ipv6Addr),
        guest_mac: EthernetAddress,
        at: usize,
    ) -> Ingress {
        let Ok(packet) = Icmpv6Packet::new_checked(self.l4(at)) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        if !packet.verify_checksum(&src, &dst) {
            return Ingress::Dropped(DropReason::BadChecksum);
        }
        match packet.msg_type() {
            Icmpv6Message::EchoRequest if self.cfg.is_own_address6(dst) => {
                let (ident, seq_no) = (packet.echo_ident(), packet.echo_seq_no());
                let data = packet.payload().to_vec();
                self.note_guest(src, guest_mac);
                let request = EchoRequest {
                    guest: src.into(),
                    remote: dst.into(),
                    ident,
                    seq_no,
                };
                self.send_echo_reply(request, |out| {
                    out.get_mut(..data.len())?.copy_from_slice(&data);
                    Some(data.len())
                });
                Ingress::Handled
            }
            Icmpv6Message::EchoRequest if !dst.is_multicast() => {
                let data_len = packet.payload().len();
                let request = EchoRequest {
                    guest: src.into(),
                    remote: dst.into(),
                    ident: packet.echo_ident(),
                    seq_no: packet.echo_seq_no(),
                };
                self.note_guest(src, guest_mac);
                let data_at = at + emit::ICMP_HEADER_LEN;
                self.rx_payload = data_at..data_at + data_len;
                Ingress::Echo(request)
            }
            Icmpv6Message::RouterSolicit => {
                let (to, mac) = if src.is_unspecified() {
                    (ALL_NODES, multicast_mac(ALL_NODES))
                } else {
                    (src, guest_mac)
                };
                self.send_router_advert(to, mac);
                Ingress::Handled
            }
            Icmpv6Message::NeighborSolicit => {
                let target = NdiscRepr::parse(&packet).ok().and_then(|repr| match repr {
                    NdiscRepr::NeighborSolicit { target_addr, .. } => Some(target_addr),
                    _ => None,
                });
                match target {
                    Some(target) if self.cfg.is_own_address6(target) => {
                        self.deliver(now, None);
                        Ingress::Handled
                    }
                    Some(_) => Ingress::Dropped(DropReason::NotOurs),
                    None => Ingress::Dropped(DropReason::Malformed),
                }
            }
            Icmpv6Message::NeighborAdvert => {
                self.deliver(now, None);
                Ingress::Handled
            }
            _ => Ingress::Dropped(DropReason::Unsupported),
        }
    }

    fn send_router_advert(&mut self, to: Ipv6Addr, mac: EthernetAddress) {
        let gateway_mac = EthernetAddress(self.cfg.gateway_mac());
        let advert = Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
            hop_limit: 64,
            flags: NdiscRouterFlags::empty(),
            router_lifetime: ROUTER_LIFETIME,
            reachable_time: Duration::ZERO,
            retrans_time: Duration::ZERO,
            lladdr: Some(RawHardwareAddress::from(gateway_mac)),
            mtu: Some(self.cfg.mtu as u32),
            prefix_info: Some(NdiscPrefixInformation {
                prefix_len: IPV6_PREFIX_LEN,
                flags: NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF,
                valid_lifetime: PREFIX_VALID,
                preferred_lifetime: PREFIX_PREFERRED,
                prefix: IPV6_PREFIX,
            }),
        });
        let link = Link {
            src: gateway_mac,
            dst: mac,
        };
        emit::icmpv6(
            &mut self.device,
            link,
            self.cfg.router_link_local(),
            to,
            &advert,
        );
    }

    /// Sends an unsolicited router advertisement when one is due; returns when the next is.
    pub fn poll_router_advert(&mut self, now: Instant) -> Option<Instant> {
        let due = self.next_router_advert?;
        if due <= now {
            self.send_router_advert(ALL_NODES, multicast_mac(ALL_NODES));
            self.next_router_advert = Some(now + ROUTER_ADVERT_INTERVAL);
        }
        self.next_router_advert
    }

    /// Teaches smoltcp the MAC of a guest IPv6 address seen for the first time (see the
    /// module comment). Call when the received frame has been dealt with.
    pub fn teach_neighbors(&mut self, now: Instant) {
        let Some((addr, mac)) = self.new_neighbor.take() else {
            return;
        };
        let advert = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::OVERRIDE,
            target_addr: addr,
            lladdr: Some(RawHardwareAddress::from(mac)),
        });
        let router = self.cfg.router_link_local();
        let l4_len = advert.buffer_len();
        let len = ETHERNET_HEADER_LEN + HEADER_LEN + l4_len;
        let gateway_mac = EthernetAddress(self.cfg.gateway_mac());
        let Some(buf) = self.device.rx_buffer().get_mut(..len) else {
            return;
        };
        let mut eth = EthernetFrame::new_unchecked(&mut *buf);
        eth.set_src_addr(mac);
        eth.set_dst_addr(gateway_mac);
        eth.set_ethertype(EthernetProtocol::Ipv6);
        let repr = Ipv6Repr {
            src_addr: addr,
            dst_addr: router,
            next_header: IpProtocol::Icmpv6,
            payload_len: l4_len,
            hop_limit: 255,
        };
        repr.emit(&mut Ipv6Packet::new_unchecked(
            &mut buf[ETHERNET_HEADER_LEN..],
        ));
        let mut packet = Icmpv6Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN + HEADER_LEN..]);
        advert.emit(
            &addr,
            &router,
            &mut packet,
            &smoltcp::phy::ChecksumCapabilities::default(),
        );
        self.device.set_received(len);
        self.deliver(now, None);
    }
}

/// Answers the IPv6 packet held in `device` with ICMPv6 "no route to destination" from the
/// gateway: the guest's connect() fails with ENETUNREACH.
pub fn reply_no_route(device: &mut FrameDevice, cfg: &NetConfig) {
    let Some(frame) = device.received() else {
        return;
    };
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return;
    };
    let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
        return;
    };
    let Ok(header) = Ipv6Repr::parse(&ip) else {
        return;
    };
    let link = Link {
        src: EthernetAddress(cfg.gateway_mac()),
        dst: eth.src_addr(),
    };
    // The quote: as much of the packet as fits in the minimum MTU.
    let room = MIN_MTU - HEADER_LEN - emit::ICMP_HEADER_LEN - HEADER_LEN;
    let data = ip.payload();
    let quote = data[..data.len().min(room)].to_vec();
    let error = Icmpv6Repr::DstUnreachable {
        reason: Icmpv6DstUnreachable::NoRoute,
        header,
        data: &quote,
    };
    emit::icmpv6(device, link, cfg.gateway6(), header.src_addr, &error);
}

/// Tells the guest its UDP datagrams from `guest` to `remote` cannot be delivered.
pub fn send_udp_unreachable(
    device: &mut FrameDevice,
    link: Link,
    guest: SocketAddrV6,
    remote: SocketAddrV6,
    reason: Unreachable,
) {
    let reason = match reason {
        Unreachable::Net => Icmpv6DstUnreachable::NoRoute,
        Unreachable::Host => Icmpv6DstUnreachable::AddrUnreachable,
        Unreachable::Port => Icmpv6DstUnreachable::PortUnreachable,
    };
    let header = Ipv6Repr {
        src_addr: *guest.ip(),
        dst_addr: *remote.ip(),
        next_header: IpProtocol::Udp,
        payload_len: emit::UDP_HEADER_LEN,
        hop_limit: 64,
    };
    let mut udp = [0u8; emit::UDP_HEADER_LEN];
    udp[0..2].copy_from_slice(&guest.port().to_be_bytes());
    udp[2..4].copy_from_slice(&remote.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(emit::UDP_HEADER_LEN as u16).to_be_bytes());
    let error = Icmpv6Repr::DstUnreachable {
        reason,
        header,
        data: &udp,
    };
    emit::icmpv6(device, link, *remote.ip(), *guest.ip(), &error);
}
