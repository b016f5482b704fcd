//! Port-forward traffic into the guest, checked with `pnet_packet` (independent of smoltcp):
//! UDP datagrams and their fragments, waiting for the guest's ARP answer, guest datagrams
//! classified for the forwarder, and the SYN of a forwarded connection.

use std::net::{Ipv4Addr, SocketAddrV4};

use pnet_base::MacAddr;
use pnet_packet::Packet;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::{self, Ipv4Packet, MutableIpv4Packet};
use pnet_packet::tcp::{TcpFlags, TcpPacket};
use pnet_packet::udp::{self, MutableUdpPacket, UdpPacket};
use smoltcp::time::Instant;

use super::*;

const GUEST_MAC: MacAddr = MacAddr(0x02, 0x00, 0x00, 0x00, 0x00, 0x64);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

fn gateway_mac() -> MacAddr {
    MacAddr(0x52, 0x55, 10, 0, 2, 2)
}

fn now() -> Instant {
    Instant::from_millis(1)
}

fn feed(stack: &mut Stack, frame: &[u8]) -> Ingress {
    stack.rx_buffer()[..frame.len()].copy_from_slice(frame);
    stack.classify(now(), frame.len())
}

fn take_frames(stack: &mut Stack) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(frame) = stack.next_tx() {
        out.push(frame.to_vec());
        stack.tx_done();
    }
    out
}

fn arp(operation: pnet_packet::arp::ArpOperation, target: Ipv4Addr) -> Vec<u8> {
    let mut buf = [0u8; 28];
    let mut arp = MutableArpPacket::new(&mut buf).unwrap();
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(operation);
    arp.set_sender_hw_addr(GUEST_MAC);
    arp.set_sender_proto_addr(GUEST);
    arp.set_target_hw_addr(if operation == ArpOperations::Reply {
        gateway_mac()
    } else {
        MacAddr::zero()
    });
    arp.set_target_proto_addr(target);
    let mut frame = vec![0u8; 14 + 28];
    let mut eth = MutableEthernetPacket::new(&mut frame).unwrap();
    eth.set_destination(MacAddr::broadcast());
    eth.set_source(GUEST_MAC);
    eth.set_ethertype(EtherTypes::Arp);
    eth.set_payload(&buf);
    frame
}

/// A stack that knows the guest's MAC (it asked for the gateway's).
fn stack() -> Stack {
    let mut stack = Stack::new(NetConfig::default(), Instant::from_millis(0));
    feed(&mut stack, &arp(ArpOperations::Request, GATEWAY));
    take_frames(&mut stack);
    assert!(stack.take_neighbor_news());
    stack
}

/// A UDP datagram from the guest, with a correct checksum unless `corrupt`.
fn guest_udp(dst: SocketAddrV4, src_port: u16, payload: &[u8], corrupt: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + payload.len()];
    let mut u = MutableUdpPacket::new(&mut buf).unwrap();
    u.set_source(src_port);
    u.set_destination(dst.port());
    u.set_length((8 + payload.len()) as u16);
    u.set_payload(payload);
    let sum = udp::ipv4_checksum(&u.to_immutable(), &GUEST, dst.ip());
    u.set_checksum(if corrupt { sum ^ 0x5a5a } else { sum });
    let mut ip_buf = vec![0u8; 20 + buf.len()];
    let mut ip = MutableIpv4Packet::new(&mut ip_buf).unwrap();
    ip.set_version(4);
    ip.set_header_length(5);
    ip.set_total_length((20 + buf.len()) as u16);
    ip.set_ttl(64);
    ip.set_next_level_protocol(IpNextHeaderProtocols::Udp);
    ip.set_source(GUEST);
    ip.set_destination(*dst.ip());
    ip.set_payload(&buf);
    let sum = ipv4::checksum(&ip.to_immutable());
    ip.set_checksum(sum);
    let mut frame = vec![0u8; 14 + ip_buf.len()];
    let mut eth = MutableEthernetPacket::new(&mut frame).unwrap();
    eth.set_destination(gateway_mac());
    eth.set_source(GUEST_MAC);
    eth.set_ethertype(EtherTypes::Ipv4);
    eth.set_payload(&ip_buf);
    frame
}

/// Checks Ethernet and IPv4 headers of a frame to the guest; returns (ident, more fragments,
/// offset, IP payload).
fn ipv4_to_guest(frame: &[u8], src: Ipv4Addr) -> (u16, bool, usize, Vec<u8>) {
    let eth = EthernetPacket::new(frame).unwrap();
    assert_eq!(eth.get_destination(), GUEST_MAC);
    assert_eq!(eth.get_source(), gateway_mac());
    assert_eq!(eth.get_ethertype(), EtherTypes::Ipv4);
    let ip = Ipv4Packet::new(eth.payload()).unwrap();
    assert_eq!(ip.get_source(), src);
    assert_eq!(ip.get_destination(), GUEST);
    assert_eq!(ip.get_next_level_protocol(), IpNextHeaderProtocols::Udp);
    assert_eq!(
        ip.get_checksum(),
        ipv4::checksum(&ip),
        "IPv4 header checksum"
    );
    let more = ip.get_flags() & ipv4::Ipv4Flags::MoreFragments != 0;
    let len = usize::from(ip.get_total_length()) - 20;
    (
        ip.get_identification(),
        more,
        usize::from(ip.get_fragment_offset()) * 8,
        ip.payload()[..len].to_vec(),
    )
}

fn check_udp(datagram: &[u8], src: SocketAddrV4, dst_port: u16, payload: &[u8]) {
    let u = UdpPacket::new(datagram).unwrap();
    assert_eq!(u.get_source(), src.port());
    assert_eq!(u.get_destination(), dst_port);
    assert_eq!(usize::from(u.get_length()), datagram.len());
    assert_eq!(
        u.get_checksum(),
        udp::ipv4_checksum(&u, src.ip(), &GUEST),
        "UDP checksum"
    );
    assert!(u.payload() == payload, "payload differs");
}

#[test]
fn udp_to_a_known_guest_is_one_checked_datagram() {
    let mut stack = stack();
    let src = SocketAddrV4::new(CLIENT, 5353);
    let payload = b"forwarded datagram";
    assert_eq!(
        stack.send_udp_to_guest(now(), src, SocketAddrV4::new(GUEST, 53), payload),
        UdpSend::Sent
    );
    let frames = take_frames(&mut stack);
    assert_eq!(frames.len(), 1);
    let (_, more, offset, datagram) = ipv4_to_guest(&frames[0], CLIENT);
    assert!(!more);
    assert_eq!(offset, 0);
    check_udp(&datagram, src, 53, payload);
}

#[test]
fn udp_larger_than_the_mtu_goes_in_fragments() {
    let mut stack = stack();
    let src = SocketAddrV4::new(GATEWAY, 40000);
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7 + 3) as u8).collect();
    stack.send_udp_to_guest(now(), src, SocketAddrV4::new(GUEST, 9999), &payload);
    let frames = take_frames(&mut stack);
    assert_eq!(
        frames.len(),
        3,
        "4008 bytes at MTU 1500: 1480 + 1480 + 1048"
    );
    let mut whole = vec![0u8; 8 + payload.len()];
    let mut idents = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        assert!(frame.len() <= 1514);
        let (ident, more, offset, part) = ipv4_to_guest(frame, GATEWAY);
        assert_eq!(more, i + 1 < frames.len());
        assert_eq!(offset % 8, 0);
        whole[offset..offset + part.len()].copy_from_slice(&part);
        idents.push(ident);
    }
    assert!(idents.iter().all(|&id| id == idents[0]), "{idents:?}");
    check_udp(&whole, src, 9999, &payload);
}

#[test]
fn udp_to_an_unknown_guest_waits_for_its_arp_answer() {
    let mut stack = Stack::new(NetConfig::default(), Instant::from_millis(0));
    let src = SocketAddrV4::new(GATEWAY, 40001);
    assert_eq!(
        stack.send_udp_to_guest(now(), src, SocketAddrV4::new(GUEST, 53), b"q"),
        UdpSend::Pending
    );
    let frames = take_frames(&mut stack);
    assert_eq!(frames.len(), 1, "one ARP request");
    let eth = EthernetPacket::new(&frames[0]).unwrap();
    assert_eq!(eth.get_ethertype(), EtherTypes::Arp);
    assert_eq!(eth.get_destination(), MacAddr::broadcast());
    let req = ArpPacket::new(eth.payload()).unwrap();
    assert_eq!(req.get_operation(), ArpOperations::Request);
    assert_eq!(req.get_sender_proto_addr(), GATEWAY);
    assert_eq!(req.get_sender_hw_addr(), gateway_mac());
    assert_eq!(req.get_target_proto_addr(), GUEST);
    // The guest answers: the datagram goes out.
    feed(&mut stack, &arp(ArpOperations::Reply, GATEWAY));
    assert!(stack.take_neighbor_news());
    let frames = take_frames(&mut stack);
    let udp_frames: Vec<_> = frames
        .iter()
        .filter(|f| EthernetPacket::new(f).unwrap().get_ethertype() == EtherTypes::Ipv4)
        .collect();
    assert_eq!(udp_frames.len(), 1);
    let (_, _, _, datagram) = ipv4_to_guest(udp_frames[0], GATEWAY);
    check_udp(&datagram, src, 53, b"q");
}

#[test]
fn guest_datagrams_are_classified_with_their_payload() {
    let mut stack = stack();
    let dst = SocketAddrV4::new(CLIENT, 7000);
    assert_eq!(
        feed(&mut stack, &guest_udp(dst, 53, b"answer", false)),
        Ingress::Udp {
            key: FlowKey {
                guest: SocketAddrV4::new(GUEST, 53).into(),
                remote: dst.into(),
            }
        }
    );
    assert_eq!(stack.received_payload(), b"answer");
    stack.consume_received();
    assert_eq!(stack.received_payload(), b"");
    assert_eq!(
        feed(&mut stack, &guest_udp(dst, 53, b"answer", true)),
        Ingress::Dropped(DropReason::BadChecksum)
    );
}

#[test]
fn a_forwarded_connection_dials_the_guest_from_the_peer_address() {
    let mut stack = stack();
    let key = FlowKey {
        guest: SocketAddrV4::new(GUEST, 8080).into(),
        remote: SocketAddrV4::new(CLIENT, 45678).into(),
    };
    let mut guest = stack.connect_guest_socket(key).expect("connect");
    stack.poll_flow(now(), &mut guest);
    let frames = take_frames(&mut stack);
    assert_eq!(frames.len(), 1);
    let eth = EthernetPacket::new(&frames[0]).unwrap();
    assert_eq!(eth.get_destination(), GUEST_MAC);
    let ip = Ipv4Packet::new(eth.payload()).unwrap();
    assert_eq!((ip.get_source(), ip.get_destination()), (CLIENT, GUEST));
    let syn = TcpPacket::new(ip.payload()).unwrap();
    assert_eq!(syn.get_flags(), TcpFlags::SYN);
    assert_eq!((syn.get_source(), syn.get_destination()), (45678, 8080));
}
