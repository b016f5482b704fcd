//! The stack on frames built and read by `pnet_packet`, an implementation independent of
//! smoltcp, with time as a plain number. No kernel, no sockets.

use std::net::{Ipv4Addr, SocketAddrV4};

use pnet_base::MacAddr;
use pnet_packet::Packet;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmp::{IcmpCode, IcmpPacket, IcmpTypes, MutableIcmpPacket};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::{self, Ipv4Packet, MutableIpv4Packet};
use pnet_packet::tcp::{self, MutableTcpPacket, TcpFlags, TcpPacket};
use pnet_packet::udp::{MutableUdpPacket, UdpPacket};
use smoltcp::time::Instant;

use super::*;

const GUEST_MAC: MacAddr = MacAddr(0x02, 0x00, 0x00, 0x00, 0x00, 0x64);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn gateway_mac() -> MacAddr {
    MacAddr(0x52, 0x55, 10, 0, 2, 2)
}

/// A stack that has already seen the guest's ARP request for the gateway, as a real guest
/// sends before anything else (so the stack knows the guest's MAC).
fn stack_with(cfg: NetConfig) -> Stack {
    let mut stack = Stack::new(cfg, Instant::from_millis(0));
    feed(&mut stack, &arp_request(GATEWAY));
    take_frames(&mut stack);
    stack
}

fn stack() -> Stack {
    stack_with(NetConfig::default())
}

/// Copies `frame` into the stack's receive buffer and classifies it.
fn feed(stack: &mut Stack, frame: &[u8]) -> Ingress {
    stack.rx_buffer()[..frame.len()].copy_from_slice(frame);
    stack.classify(Instant::from_millis(1), frame.len())
}

fn take_frames(stack: &mut Stack) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(frame) = stack.next_tx() {
        out.push(frame.to_vec());
        stack.tx_done();
    }
    out
}

fn ethernet(dst: MacAddr, ethertype: pnet_packet::ethernet::EtherType, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 14 + payload.len()];
    let mut eth = MutableEthernetPacket::new(&mut buf).unwrap();
    eth.set_destination(dst);
    eth.set_source(GUEST_MAC);
    eth.set_ethertype(ethertype);
    eth.set_payload(payload);
    buf
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut buf = [0u8; 28];
    let mut arp = MutableArpPacket::new(&mut buf).unwrap();
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(ArpOperations::Request);
    arp.set_sender_hw_addr(GUEST_MAC);
    arp.set_sender_proto_addr(GUEST);
    arp.set_target_hw_addr(MacAddr::zero());
    arp.set_target_proto_addr(target);
    ethernet(MacAddr::broadcast(), EtherTypes::Arp, &buf)
}

fn ipv4(dst: Ipv4Addr, protocol: pnet_packet::ip::IpNextHeaderProtocol, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 20 + payload.len()];
    let mut ip = MutableIpv4Packet::new(&mut buf).unwrap();
    ip.set_version(4);
    ip.set_header_length(5);
    ip.set_total_length((20 + payload.len()) as u16);
    ip.set_ttl(64);
    ip.set_flags(ipv4::Ipv4Flags::DontFragment);
    ip.set_next_level_protocol(protocol);
    ip.set_source(GUEST);
    ip.set_destination(dst);
    ip.set_payload(payload);
    let sum = ipv4::checksum(&ip.to_immutable());
    ip.set_checksum(sum);
    ethernet(gateway_mac(), EtherTypes::Ipv4, &buf)
}

fn tcp_segment(dst: Ipv4Addr, dst_port: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut buf = [0u8; 20];
    let mut seg = MutableTcpPacket::new(&mut buf).unwrap();
    seg.set_source(40000);
    seg.set_destination(dst_port);
    seg.set_sequence(seq);
    seg.set_acknowledgement(ack);
    seg.set_data_offset(5);
    seg.set_flags(flags);
    seg.set_window(64240);
    let sum = tcp::ipv4_checksum(&seg.to_immutable(), &GUEST, &dst);
    seg.set_checksum(sum);
    ipv4(dst, IpNextHeaderProtocols::Tcp, &buf)
}

fn udp_datagram(dst: Ipv4Addr, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + payload.len()];
    let mut udp = MutableUdpPacket::new(&mut buf).unwrap();
    udp.set_source(40000);
    udp.set_destination(dst_port);
    udp.set_length((8 + payload.len()) as u16);
    udp.set_payload(payload);
    let sum = pnet_packet::udp::ipv4_checksum(&udp.to_immutable(), &GUEST, &dst);
    udp.set_checksum(sum);
    ipv4(dst, IpNextHeaderProtocols::Udp, &buf)
}

fn echo_request(dst: Ipv4Addr, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + data.len()];
    let mut icmp = MutableIcmpPacket::new(&mut buf).unwrap();
    icmp.set_icmp_type(IcmpTypes::EchoRequest);
    icmp.set_icmp_code(IcmpCode(0));
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&ident.to_be_bytes());
    rest[2..].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&rest);
    buf[8..].copy_from_slice(data);
    let sum = pnet_packet::icmp::checksum(&IcmpPacket::new(&buf).unwrap());
    MutableIcmpPacket::new(&mut buf).unwrap().set_checksum(sum);
    ipv4(dst, IpNextHeaderProtocols::Icmp, &buf)
}

/// The IPv4 packet in an Ethernet frame sent to the guest, checked with pnet.
fn ip_of(frame: &[u8]) -> Ipv4Packet<'_> {
    let eth = EthernetPacket::new(frame).unwrap();
    assert_eq!(eth.get_destination(), GUEST_MAC);
    assert_eq!(eth.get_source(), gateway_mac());
    assert_eq!(eth.get_ethertype(), EtherTypes::Ipv4);
    let ip = Ipv4Packet::new(&frame[14..]).unwrap();
    assert_eq!(
        ip.get_checksum(),
        ipv4::checksum(&ip),
        "IPv4 header checksum"
    );
    ip
}

fn tcp_of<'a>(ip: &'a Ipv4Packet<'a>) -> TcpPacket<'a> {
    assert_eq!(ip.get_next_level_protocol(), IpNextHeaderProtocols::Tcp);
    let seg = TcpPacket::new(ip.payload()).unwrap();
    assert_eq!(
        seg.get_checksum(),
        tcp::ipv4_checksum(&seg, &ip.get_source(), &ip.get_destination()),
        "TCP checksum"
    );
    seg
}

#[test]
fn gateway_answers_arp_with_its_mac() {
    let mut stack = Stack::new(NetConfig::default(), Instant::from_millis(0));
    assert_eq!(feed(&mut stack, &arp_request(GATEWAY)), Ingress::Handled);
    let frames = take_frames(&mut stack);
    assert_eq!(frames.len(), 1);
    let eth = EthernetPacket::new(&frames[0]).unwrap();
    let arp = ArpPacket::new(eth.payload()).unwrap();
    assert_eq!(arp.get_operation(), ArpOperations::Reply);
    assert_eq!(arp.get_sender_hw_addr(), gateway_mac());
    assert_eq!(arp.get_sender_proto_addr(), GATEWAY);
    assert_eq!(arp.get_target_proto_addr(), GUEST);
}

#[test]
fn arp_for_an_address_nobody_holds_gets_no_answer() {
    let mut stack = stack();
    let verdict = feed(&mut stack, &arp_request(Ipv4Addr::new(10, 0, 2, 50)));
    assert_eq!(verdict, Ingress::Dropped(DropReason::NotOurs));
    assert!(take_frames(&mut stack).is_empty());
    assert_eq!(stack.counters.drops(DropReason::NotOurs), 1);
}

#[test]
fn gateway_answers_ping_with_same_ident_sequence_and_data() {
    let mut stack = stack();
    let data = b"tapsplice ping payload";
    assert_eq!(
        feed(&mut stack, &echo_request(GATEWAY, 0x1234, 7, data)),
        Ingress::Handled
    );
    let frames = take_frames(&mut stack);
    assert_eq!(frames.len(), 1);
    let ip = ip_of(&frames[0]);
    assert_eq!(ip.get_source(), GATEWAY);
    assert_eq!(ip.get_destination(), GUEST);
    let icmp = IcmpPacket::new(ip.payload()).unwrap();
    assert_eq!(icmp.get_icmp_type(), IcmpTypes::EchoReply);
    assert_eq!(icmp.get_checksum(), pnet_packet::icmp::checksum(&icmp));
    assert_eq!(&ip.payload()[4..6], &0x1234u16.to_be_bytes());
    assert_eq!(&ip.payload()[6..8], &7u16.to_be_bytes());
    assert_eq!(&ip.payload()[8..], data);
}

#[test]
fn ping_to_other_addresses_goes_to_the_nat_not_answered_here() {
    let mut stack = stack();
    let verdict = feed(&mut stack, &echo_request(REMOTE, 0x77, 5, b"echo data"));
    assert_eq!(
        verdict,
        Ingress::Echo(EchoRequest {
            guest: GUEST.into(),
            remote: REMOTE.into(),
            ident: 0x77,
            seq_no: 5,
        })
    );
    assert_eq!(stack.received_payload(), b"echo data");
    assert!(take_frames(&mut stack).is_empty(), "no faked reply");
}

#[test]
fn udp_datagram_is_classified_with_its_payload() {
    let mut stack = stack();
    let frame = udp_datagram(REMOTE, 5353, b"query bytes");
    let verdict = feed(&mut stack, &frame);
    assert_eq!(
        verdict,
        Ingress::Udp {
            key: FlowKey {
                guest: SocketAddrV4::new(GUEST, 40000).into(),
                remote: SocketAddrV4::new(REMOTE, 5353).into(),
            }
        }
    );
    assert_eq!(stack.received_payload(), b"query bytes");
}

#[test]
fn udp_reply_reaches_the_guest_from_the_address_it_dialled() {
    let mut stack = stack();
    feed(&mut stack, &udp_datagram(REMOTE, 5353, b"q"));
    stack.consume_received();
    let from = SocketAddrV4::new(REMOTE, 5353).into();
    let to = SocketAddrV4::new(GUEST, 40000).into();
    let sent = stack.send_udp(from, to, |buf| {
        buf[..5].copy_from_slice(b"reply");
        Some(5)
    });
    assert_eq!(sent, Some(5));
    let frames = take_frames(&mut stack);
    assert_eq!(frames.len(), 1);
    let ip = ip_of(&frames[0]);
    assert_eq!(ip.get_source(), REMOTE);
    let udp = UdpPacket::new(ip.payload()).unwrap();
    assert_eq!(udp.get_source(), 5353);
    assert_eq!(udp.get_destination(), 40000);
    assert_eq!(udp.payload(), b"reply");
    assert_eq!(
        udp.get_checksum(),
        pnet_packet::udp::ipv4_checksum(&udp, &REMOTE, &GUEST)
    );
}

#[test]
fn disabled_dns_gets_no_answer_at_all() {
    let mut stack = stack_with(NetConfig {
        disable_dns: true,
        ..NetConfig::default()
    });
    let dns = Ipv4Addr::new(10, 0, 2, 3);
    // A datagram is refused where it would open a NAT flow (it could answer a forward).
    let Ingress::Udp { key } = feed(&mut stack, &udp_datagram(dns, 53, b"query")) else {
        panic!("expected a UDP verdict");
    };
    assert!(stack.refuse_datagram_by_policy(key));
    assert_eq!(stack.counters.drops(DropReason::Disabled), 1);
    let syn = tcp_segment(dns, 53, TcpFlags::SYN, 1, 0);
    assert_eq!(
        feed(&mut stack, &syn),
        Ingress::Dropped(DropReason::Disabled)
    );
    assert!(take_frames(&mut stack).is_empty());
}

#[test]
fn udp_error_from_the_host_becomes_icmp_port_unreachable() {
    let mut stack = stack();
    feed(&mut stack, &udp_datagram(REMOTE, 9, b"x"));
    stack.consume_received();
    let key = FlowKey {
        guest: SocketAddrV4::new(GUEST, 40000).into(),
        remote: SocketAddrV4::new(REMOTE, 9).into(),
    };
    stack.send_udp_unreachable(key, Unreachable::Port);
    let frames = take_frames(&mut stack);
    assert_eq!(frames.len(), 1);
    let ip = ip_of(&frames[0]);
    assert_eq!(ip.get_source(), REMOTE);
    let icmp = IcmpPacket::new(ip.payload()).unwrap();
    assert_eq!(icmp.get_icmp_type(), IcmpTypes::DestinationUnreachable);
    assert_eq!(icmp.get_icmp_code(), IcmpCode(3));
    assert_eq!(icmp.get_checksum(), pnet_packet::icmp::checksum(&icmp));
    let quoted = Ipv4Packet::new(&ip.payload()[8..]).unwrap();
    assert_eq!(quoted.get_source(), GUEST);
    assert_eq!(quoted.get_destination(), REMOTE);
    let quoted_udp = UdpPacket::new(quoted.payload()).unwrap();
    assert_eq!(quoted_udp.get_source(), 40000);
    assert_eq!(quoted_udp.get_destination(), 9);
}

#[test]
fn syn_ack_is_held_until_the_host_side_connects() {
    let mut stack = stack();
    let syn = tcp_segment(REMOTE, 80, TcpFlags::SYN, 1000, 0);
    let key = FlowKey {
        guest: SocketAddrV4::new(GUEST, 40000).into(),
        remote: SocketAddrV4::new(REMOTE, 80).into(),
    };
    assert_eq!(feed(&mut stack, &syn), Ingress::Tcp { key, opens: true });
    let mut guest = stack.open_guest_socket(key);
    stack.deliver(Instant::from_millis(1), Some(&mut guest));
    stack.poll_flow(Instant::from_millis(2), &mut guest);
    assert!(
        take_frames(&mut stack).is_empty(),
        "no SYN-ACK before accept"
    );

    guest.accept();
    stack.poll_flow(Instant::from_millis(3), &mut guest);
    let frames = take_frames(&mut stack);
    assert_eq!(frames.len(), 1);
    let ip = ip_of(&frames[0]);
    assert_eq!(
        ip.get_source(),
        REMOTE,
        "the reply comes from the address dialled"
    );
    let seg = tcp_of(&ip);
    assert_eq!(seg.get_source(), 80);
    assert_eq!(seg.get_destination(), 40000);
    assert_eq!(seg.get_flags(), TcpFlags::SYN | TcpFlags::ACK);
    assert_eq!(seg.get_acknowledgement(), 1001);
}

#[test]
fn refused_host_connect_resets_the_guest() {
    let mut stack = stack();
    let syn = tcp_segment(REMOTE, 81, TcpFlags::SYN, 5000, 0);
    let Ingress::Tcp { key, .. } = feed(&mut stack, &syn) else {
        panic!("expected a TCP verdict");
    };
    let mut guest = stack.open_guest_socket(key);
    stack.deliver(Instant::from_millis(1), Some(&mut guest));
    guest.refuse();
    stack.poll_flow(Instant::from_millis(2), &mut guest);
    let frames = take_frames(&mut stack);
    assert_eq!(frames.len(), 1);
    let ip = ip_of(&frames[0]);
    let seg = tcp_of(&ip);
    assert_ne!(seg.get_flags() & TcpFlags::RST, 0, "RST flag set");
    assert_eq!(seg.get_acknowledgement(), 5001);
}

#[test]
fn segment_without_a_flow_is_reset() {
    let mut stack = stack();
    let stray = tcp_segment(REMOTE, 80, TcpFlags::ACK, 7, 9);
    assert!(matches!(
        feed(&mut stack, &stray),
        Ingress::Tcp { opens: false, .. }
    ));
    stack.deliver(Instant::from_millis(1), None);
    let frames = take_frames(&mut stack);
    assert_eq!(frames.len(), 1);
    let ip = ip_of(&frames[0]);
    assert_ne!(tcp_of(&ip).get_flags() & TcpFlags::RST, 0);
}

#[test]
fn disabled_host_loopback_answers_net_unreachable_quoting_the_syn() {
    let mut stack = stack_with(NetConfig {
        disable_host_loopback: true,
        ..NetConfig::default()
    });
    let syn = tcp_segment(GATEWAY, 8080, TcpFlags::SYN, 42, 0);
    assert_eq!(feed(&mut stack, &syn), Ingress::Handled);
    let frames = take_frames(&mut stack);
    assert_eq!(frames.len(), 1);
    let ip = ip_of(&frames[0]);
    assert_eq!(ip.get_source(), GATEWAY);
    let icmp = IcmpPacket::new(ip.payload()).unwrap();
    assert_eq!(icmp.get_icmp_type(), IcmpTypes::DestinationUnreachable);
    assert_eq!(icmp.get_icmp_code(), IcmpCode(0), "code 0: net unreachable");
    assert_eq!(icmp.get_checksum(), pnet_packet::icmp::checksum(&icmp));
    // The quote: the SYN's IP header and the first 8 bytes of its TCP header.
    assert_eq!(&ip.payload()[8..], &syn[14..14 + 28]);
    assert_eq!(stack.counters.refused_host_loopback, 1);
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let mut stack = stack();
    assert_eq!(
        feed(&mut stack, &[0u8; 5]),
        Ingress::Dropped(DropReason::Malformed)
    );
    let mut bad_sum = echo_request(GATEWAY, 1, 1, b"x");
    bad_sum[14 + 10] ^= 0xff;
    assert_eq!(
        feed(&mut stack, &bad_sum),
        Ingress::Dropped(DropReason::BadChecksum)
    );
    let mut truncated = tcp_segment(REMOTE, 80, TcpFlags::SYN, 1, 0);
    truncated.truncate(14 + 20 + 10);
    assert_eq!(
        feed(&mut stack, &truncated),
        Ingress::Dropped(DropReason::Malformed)
    );
    assert!(take_frames(&mut stack).is_empty());
    assert_eq!(stack.counters.drops(DropReason::Malformed), 2);
    assert_eq!(stack.counters.drops(DropReason::BadChecksum), 1);
}

/// Guest frames are untrusted: any corruption of valid frames is dropped, answered or passed
/// on, never a panic. A deterministic xorshift drives byte flips and truncations.
#[test]
fn corrupted_frames_never_panic() {
    let mut stack = stack();
    let key = FlowKey {
        guest: SocketAddrV4::new(GUEST, 40000).into(),
        remote: SocketAddrV4::new(REMOTE, 80).into(),
    };
    let mut guest = stack.open_guest_socket(key);
    let seeds = [
        arp_request(GATEWAY),
        echo_request(GATEWAY, 9, 9, b"0123456789abcdef"),
        tcp_segment(REMOTE, 80, TcpFlags::SYN, 1, 0),
        tcp_segment(REMOTE, 80, TcpFlags::ACK | TcpFlags::PSH, 2, 1),
        tcp_segment(GATEWAY, 22, TcpFlags::FIN | TcpFlags::ACK, 3, 1),
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000u64 {
        let mut frame = seeds[(round % seeds.len() as u64) as usize].clone();
        for _ in 0..(1 + next() % 4) {
            let at = (next() % frame.len() as u64) as usize;
            frame[at] ^= (next() % 255 + 1) as u8;
        }
        if next() % 4 == 0 {
            frame.truncate((next() % frame.len() as u64) as usize);
        }
        let now = Instant::from_millis(round as i64);
        match feed(&mut stack, &frame) {
            Ingress::Tcp { key: k, .. } if k == key => stack.deliver(now, Some(&mut guest)),
            Ingress::Tcp { .. } => stack.deliver(now, None),
            _ => {}
        }
        take_frames(&mut stack);
    }
}

mod ipv6 {
    use std::net::{Ipv6Addr, SocketAddr};

    use pnet_packet::icmpv6::ndp::{NdpOptionTypes, RouterAdvertPacket};
    use pnet_packet::icmpv6::{Icmpv6Packet, Icmpv6Types, MutableIcmpv6Packet};
    use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};

    use super::*;

    const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x64);

    fn stack6() -> Stack {
        Stack::new(
            NetConfig {
                enable_ipv6: true,
                ..NetConfig::default()
            },
            Instant::from_millis(0),
        )
    }

    /// An ICMPv6 message from `src` to `dst` (type, code, body after the 4-byte header).
    fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut icmp = vec![0u8; 4 + body.len()];
        icmp[0] = kind;
        icmp[4..].copy_from_slice(body);
        let sum = pnet_packet::icmpv6::checksum(&Icmpv6Packet::new(&icmp).unwrap(), &src, &dst);
        MutableIcmpv6Packet::new(&mut icmp)
            .unwrap()
            .set_checksum(sum);
        let mut ip = vec![0u8; 40 + icmp.len()];
        let mut packet = MutableIpv6Packet::new(&mut ip).unwrap();
        packet.set_version(6);
        packet.set_payload_length(icmp.len() as u16);
        packet.set_next_header(IpNextHeaderProtocols::Icmpv6);
        packet.set_hop_limit(255);
        packet.set_source(src);
        packet.set_destination(dst);
        packet.set_payload(&icmp);
        ethernet(MacAddr(0x33, 0x33, 0, 0, 0, 2), EtherTypes::Ipv6, &ip)
    }

    #[test]
    fn router_solicitation_gets_an_advertisement_of_the_slaac_prefix() {
        let mut stack = stack6();
        stack.poll_router_advert(Instant::from_millis(0));
        take_frames(&mut stack); // the unsolicited one at start
        let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
        let rs = icmpv6(GUEST6, all_routers, 133, &[0u8; 4]);
        assert_eq!(feed(&mut stack, &rs), Ingress::Handled);
        let frames = take_frames(&mut stack);
        assert_eq!(frames.len(), 1);
        let ip = Ipv6Packet::new(&frames[0][14..]).unwrap();
        assert_eq!(ip.get_hop_limit(), 255, "NDP needs hop limit 255");
        assert_eq!(ip.get_source(), Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2));
        assert_eq!(ip.get_destination(), GUEST6);
        let icmp = Icmpv6Packet::new(ip.payload()).unwrap();
        assert_eq!(icmp.get_icmpv6_type(), Icmpv6Types::RouterAdvert);
        assert_eq!(
            icmp.get_checksum(),
            pnet_packet::icmpv6::checksum(&icmp, &ip.get_source(), &ip.get_destination())
        );
        let ra = RouterAdvertPacket::new(ip.payload()).unwrap();
        assert!(ra.get_lifetime() > 0, "must be a default router");
        let prefix = ra
            .get_options()
            .into_iter()
            .find(|o| o.option_type == NdpOptionTypes::PrefixInformation)
            .expect("prefix information option");
        // Option data: prefix length, flags (on-link, autonomous), lifetimes, reserved, prefix.
        assert_eq!(prefix.data[0], 64);
        assert_eq!(prefix.data[1] & 0xc0, 0xc0);
        assert_eq!(&prefix.data[14..16], &[0xfd, 0x00]);
    }

    #[test]
    fn duplicate_address_detection_of_the_guest_gets_no_answer() {
        let mut stack = stack6();
        stack.poll_router_advert(Instant::from_millis(0));
        take_frames(&mut stack);
        let tentative = Ipv6Addr::new(0xfd00, 0, 0, 0, 0x1, 0x2, 0x3, 0x4);
        let mut body = vec![0u8; 4];
        body.extend_from_slice(&tentative.octets());
        let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff03, 0x4);
        let ns = icmpv6(Ipv6Addr::UNSPECIFIED, solicited, 135, &body);
        assert_eq!(feed(&mut stack, &ns), Ingress::Dropped(DropReason::NotOurs));
        assert!(take_frames(&mut stack).is_empty());
    }

    #[test]
    fn neighbor_solicitation_for_the_gateway_is_answered() {
        let mut stack = stack6();
        stack.poll_router_advert(Instant::from_millis(0));
        take_frames(&mut stack);
        let gateway = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        let mut body = vec![0u8; 4];
        body.extend_from_slice(&gateway.octets());
        // Source link-layer address option.
        body.extend_from_slice(&[1, 1, 0x02, 0, 0, 0, 0, 0x64]);
        let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x2);
        let ns = icmpv6(GUEST6, solicited, 135, &body);
        assert_eq!(feed(&mut stack, &ns), Ingress::Handled);
        let frames = take_frames(&mut stack);
        assert_eq!(frames.len(), 1);
        let ip = Ipv6Packet::new(&frames[0][14..]).unwrap();
        let icmp = Icmpv6Packet::new(ip.payload()).unwrap();
        assert_eq!(icmp.get_icmpv6_type(), Icmpv6Types::NeighborAdvert);
    }

    #[test]
    fn tcp_syn_over_ipv6_opens_a_flow_to_the_address_dialled() {
        let mut stack = stack6();
        let remote = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        let mut seg = [0u8; 20];
        let mut tcp = MutableTcpPacket::new(&mut seg).unwrap();
        tcp.set_source(40000);
        tcp.set_destination(443);
        tcp.set_sequence(1);
        tcp.set_data_offset(5);
        tcp.set_flags(TcpFlags::SYN);
        tcp.set_window(64240);
        let sum = tcp::ipv6_checksum(&tcp.to_immutable(), &GUEST6, &remote);
        tcp.set_checksum(sum);
        let mut ip = vec![0u8; 40 + seg.len()];
        let mut packet = MutableIpv6Packet::new(&mut ip).unwrap();
        packet.set_version(6);
        packet.set_payload_length(seg.len() as u16);
        packet.set_next_header(IpNextHeaderProtocols::Tcp);
        packet.set_hop_limit(64);
        packet.set_source(GUEST6);
        packet.set_destination(remote);
        packet.set_payload(&seg);
        let frame = ethernet(gateway_mac(), EtherTypes::Ipv6, &ip);
        let key = FlowKey {
            guest: SocketAddr::new(GUEST6.into(), 40000),
            remote: SocketAddr::new(remote.into(), 443),
        };
        assert_eq!(feed(&mut stack, &frame), Ingress::Tcp { key, opens: true });
    }
}
