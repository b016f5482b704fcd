//! Frames the stack writes itself, outside smoltcp's sockets: UDP datagrams and ICMP
//! messages for the NAT, whose host side is an ordinary socket. smoltcp's wire module writes
//! the headers and checksums; this module only lays them out in one frame buffer, so a host
//! socket can read a payload straight into the frame that carries it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4DstUnreachable, Icmpv4Message,
    Icmpv4Packet, Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv4Packet, Ipv4Repr,
    Ipv6Packet, Ipv6Repr, UdpPacket,
};

use super::device::{ETHERNET_HEADER_LEN, FrameDevice};

/// IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// IPv6 header without extension headers.
pub const IPV6_HEADER_LEN: usize = 40;
/// UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// ICMP header: type, code, checksum, 4 bytes of rest-of-header.
pub const ICMP_HEADER_LEN: usize = 8;
/// Hop limit of packets the stack originates.
const HOP_LIMIT: u8 = 64;

/// Who a frame goes from and to at the link layer.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub src: EthernetAddress,
    pub dst: EthernetAddress,
}

/// Writes Ethernet and IPv4 headers for `payload_len` bytes of `protocol` into `buf` and
/// returns the total frame length.
fn ipv4_headers(
    buf: &mut [u8],
    link: Link,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: IpProtocol,
    payload_len: usize,
) -> usize {
    let mut eth = EthernetFrame::new_unchecked(&mut *buf);
    eth.set_src_addr(link.src);
    eth.set_dst_addr(link.dst);
    eth.set_ethertype(EthernetProtocol::Ipv4);
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: protocol,
        payload_len,
        hop_limit: HOP_LIMIT,
    };
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN..]);
    repr.emit(&mut ip, &ChecksumCapabilities::default());
    ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + payload_len
}

/// Writes Ethernet and IPv6 headers for `payload_len` bytes of `next_header` into `buf` and
/// returns the total frame length.
fn ipv6_headers(
    buf: &mut [u8],
    link: Link,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: IpProtocol,
    payload_len: usize,
) -> usize {
    ipv6_headers_hop(buf, link, (src, dst), next_header, payload_len, HOP_LIMIT)
}

/// [`ipv6_headers`] with an explicit hop limit (neighbor discovery requires 255).
fn ipv6_headers_hop(
    buf: &mut [u8],
    link: Link,
    (src, dst): (Ipv6Addr, Ipv6Addr),
    next_header: IpProtocol,
    payload_len: usize,
    hop_limit: u8,
) -> usize {
    let mut eth = EthernetFrame::new_unchecked(&mut *buf);
    eth.set_src_addr(link.src);
    eth.set_dst_addr(link.dst);
    eth.set_ethertype(EthernetProtocol::Ipv6);
    let repr = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header,
        payload_len,
        hop_limit,
    };
    repr.emit(&mut Ipv6Packet::new_unchecked(
        &mut buf[ETHERNET_HEADER_LEN..],
    ));
    ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + payload_len
}

/// Writes the IP headers for `src` -> `dst` (one family) and returns the frame length and
/// where the layer-4 header starts.
fn ip_headers(
    buf: &mut [u8],
    link: Link,
    (src, dst): (IpAddr, IpAddr),
    protocol: IpProtocol,
    l4_len: usize,
) -> Option<(usize, usize)> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some((
            ipv4_headers(buf, link, s, d, protocol, l4_len),
            ETHERNET_HEADER_LEN + IPV4_HEADER_LEN,
        )),
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let protocol = match protocol {
                IpProtocol::Icmp => IpProtocol::Icmpv6,
                other => other,
            };
            Some((
                ipv6_headers(buf, link, s, d, protocol, l4_len),
                ETHERNET_HEADER_LEN + IPV6_HEADER_LEN,
            ))
        }
        _ => None,
    }
}

/// Where the layer-4 header starts in a frame to `dst`.
fn l4_offset(dst: IpAddr) -> usize {
    ETHERNET_HEADER_LEN
        + match dst {
            IpAddr::V4(_) => IPV4_HEADER_LEN,
            IpAddr::V6(_) => IPV6_HEADER_LEN,
        }
}

/// Queues a UDP datagram from `src` to `dst` (one family) whose payload `fill` writes
/// (returning its length, or `None` to send nothing). Returns the payload length sent.
pub fn udp(
    device: &mut FrameDevice,
    link: Link,
    src: SocketAddr,
    dst: SocketAddr,
    fill: impl FnOnce(&mut [u8]) -> Option<usize>,
) -> Option<usize> {
    let max = device.frame_mtu();
    let payload_at = l4_offset(dst.ip()) + UDP_HEADER_LEN;
    let mut sent = None;
    device.emit_sized(max, |buf| {
        let payload_len = fill(&mut buf[payload_at..])?;
        let udp_len = UDP_HEADER_LEN + payload_len;
        let (len, at) = ip_headers(buf, link, (src.ip(), dst.ip()), IpProtocol::Udp, udp_len)?;
        let mut udp = UdpPacket::new_unchecked(&mut buf[at..len]);
        udp.set_src_port(src.port());
        udp.set_dst_port(dst.port());
        udp.set_len(udp_len as u16);
        udp.fill_checksum(&src.ip().into(), &dst.ip().into());
        sent = Some(payload_len);
        Some(len)
    });
    sent
}

/// The most UDP payload one frame of this device carries to `dst`.
pub fn udp_payload_capacity(device: &FrameDevice, dst: IpAddr) -> usize {
    device
        .frame_mtu()
        .saturating_sub(l4_offset(dst) + UDP_HEADER_LEN)
}

/// Queues an ICMP (or ICMPv6) echo reply from `src` to `dst` whose data `fill` writes.
pub fn echo_reply(
    device: &mut FrameDevice,
    link: Link,
    (src, dst): (IpAddr, IpAddr),
    (ident, seq_no): (u16, u16),
    fill: impl FnOnce(&mut [u8]) -> Option<usize>,
) -> Option<usize> {
    let max = device.frame_mtu();
    let data_at = l4_offset(dst) + ICMP_HEADER_LEN;
    device.emit_sized(max, |buf| {
        let data_len = fill(&mut buf[data_at..])?;
        let l4_len = ICMP_HEADER_LEN + data_len;
        let (len, at) = ip_headers(buf, link, (src, dst), IpProtocol::Icmp, l4_len)?;
        match (src, dst) {
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut icmp = Icmpv6Packet::new_unchecked(&mut buf[at..len]);
                icmp.set_msg_type(Icmpv6Message::EchoReply);
                icmp.set_msg_code(0);
                icmp.set_echo_ident(ident);
                icmp.set_echo_seq_no(seq_no);
                icmp.fill_checksum(&s, &d);
            }
            _ => {
                let mut icmp = Icmpv4Packet::new_unchecked(&mut buf[at..len]);
                icmp.set_msg_type(Icmpv4Message::EchoReply);
                icmp.set_msg_code(0);
                icmp.set_echo_ident(ident);
                icmp.set_echo_seq_no(seq_no);
                icmp.fill_checksum();
            }
        }
        Some(len)
    })
}

/// Queues an ICMPv6 message from `src` to `dst`.
pub fn icmpv6(
    device: &mut FrameDevice,
    link: Link,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    repr: &Icmpv6Repr,
) {
    let l4_len = repr.buffer_len();
    let len = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + l4_len;
    device.emit_sized(len, |buf| {
        // Neighbor discovery messages must arrive with hop limit 255 (RFC 4861).
        let hop_limit = match repr {
            Icmpv6Repr::Ndisc(_) => 255,
            _ => HOP_LIMIT,
        };
        ipv6_headers_hop(buf, link, (src, dst), IpProtocol::Icmpv6, l4_len, hop_limit);
        let mut packet =
            Icmpv6Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN + IPV6_HEADER_LEN..len]);
        repr.emit(&src, &dst, &mut packet, &ChecksumCapabilities::default());
        Some(len)
    });
}

/// Queues ICMP "destination unreachable" (`reason`) from `from` to the guest, quoting
/// `quote` (the offending datagram's IP header and first 8 payload bytes).
pub fn unreachable(
    device: &mut FrameDevice,
    link: Link,
    (from, guest): (Ipv4Addr, Ipv4Addr),
    reason: Icmpv4DstUnreachable,
    quote: &[u8],
) {
    let icmp_len = ICMP_HEADER_LEN + quote.len();
    let len = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + icmp_len;
    device.emit_sized(len, |buf| {
        ipv4_headers(buf, link, from, guest, IpProtocol::Icmp, icmp_len);
        let mut icmp =
            Icmpv4Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..len]);
        icmp.set_msg_type(Icmpv4Message::DstUnreachable);
        icmp.set_msg_code(reason.into());
        // Bytes 4..8 are unused for this message and must be zero.
        icmp.set_echo_ident(0);
        icmp.set_echo_seq_no(0);
        icmp.data_mut()[..quote.len()].copy_from_slice(quote);
        icmp.fill_checksum();
        Some(len)
    });
}

/// The quote of a UDP datagram from `guest` to `remote` as the guest sent it, rebuilt for an
/// ICMP error that arrives after the datagram itself is gone: IP header and UDP header.
pub fn udp_quote(
    guest: std::net::SocketAddrV4,
    remote: std::net::SocketAddrV4,
) -> [u8; IPV4_HEADER_LEN + UDP_HEADER_LEN] {
    let mut quote = [0u8; IPV4_HEADER_LEN + UDP_HEADER_LEN];
    let repr = Ipv4Repr {
        src_addr: *guest.ip(),
        dst_addr: *remote.ip(),
        next_header: IpProtocol::Udp,
        payload_len: UDP_HEADER_LEN,
        hop_limit: HOP_LIMIT,
    };
    repr.emit(
        &mut Ipv4Packet::new_unchecked(&mut quote[..]),
        &ChecksumCapabilities::default(),
    );
    let mut udp = UdpPacket::new_unchecked(&mut quote[IPV4_HEADER_LEN..]);
    udp.set_src_port(guest.port());
    udp.set_dst_port(remote.port());
    udp.set_len(UDP_HEADER_LEN as u16);
    udp.set_checksum(0);
    quote
}
