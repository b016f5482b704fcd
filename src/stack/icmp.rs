//! ICMP that the stack answers itself: echo replies for the gateway and DNS addresses, and
//! "network unreachable" for connections the configuration forbids.
//!
//! These are built by hand from the received frame rather than by smoltcp: in any-IP mode
//! smoltcp would answer pings for every address, and it has no notion of refusing a
//! destination by policy. Replies copy what they quote from the guest's frame, so the guest
//! kernel matches them to its socket exactly.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4DstUnreachable, Icmpv4Message,
    Icmpv4Packet, IpProtocol, Ipv4Packet, Ipv4Repr,
};

use super::device::{ETHERNET_HEADER_LEN, FrameDevice};
use crate::config::NetConfig;

/// Hop limit of packets the stack originates.
const HOP_LIMIT: u8 = 64;
/// ICMP header: type, code, checksum, and 4 bytes of rest-of-header.
const ICMP_HEADER_LEN: usize = 8;
/// How much of the offending datagram's payload an ICMP error quotes (RFC 792).
const QUOTED_PAYLOAD_LEN: usize = 8;

/// Answers an ICMP echo request held in `device`. Returns false if it is not one (or is
/// malformed), in which case nothing was queued.
pub fn reply_echo(device: &mut FrameDevice, cfg: &NetConfig) -> bool {
    let Some(frame) = device.received() else {
        return false;
    };
    let Some(len) = echo_request_len(frame) else {
        return false;
    };
    let gateway_mac = EthernetAddress(cfg.gateway_mac());
    device
        .emit_reply(len, |rx, out| {
            out.copy_from_slice(&rx[..len]);
            let mut eth = EthernetFrame::new_unchecked(&mut *out);
            let guest_mac = eth.src_addr();
            eth.set_dst_addr(guest_mac);
            eth.set_src_addr(gateway_mac);
            let mut ip = Ipv4Packet::new_unchecked(&mut out[ETHERNET_HEADER_LEN..]);
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            ip.set_src_addr(dst);
            ip.set_dst_addr(src);
            ip.set_hop_limit(HOP_LIMIT);
            ip.fill_checksum();
            let mut icmp = Icmpv4Packet::new_unchecked(ip.payload_mut());
            icmp.set_msg_type(Icmpv4Message::EchoReply);
            icmp.fill_checksum();
        })
        .is_some()
}

/// The length of the echo request in `frame` up to the end of its IP datagram, if it is a
/// well-formed one.
fn echo_request_len(frame: &[u8]) -> Option<usize> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Icmp || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
    if icmp.msg_type() != Icmpv4Message::EchoRequest
        || icmp.msg_code() != 0
        || !icmp.verify_checksum()
    {
        return None;
    }
    Some(ETHERNET_HEADER_LEN + usize::from(ip.total_len()))
}

/// Answers the IPv4 datagram held in `device` with ICMP "destination network unreachable"
/// from the gateway address.
pub fn reply_net_unreachable(device: &mut FrameDevice, cfg: &NetConfig) {
    let Some(frame) = device.received() else {
        return;
    };
    let Some(quoted_len) = quoted_len(frame) else {
        return;
    };
    let ip_payload_len = ICMP_HEADER_LEN + quoted_len;
    let len = ETHERNET_HEADER_LEN + 20 + ip_payload_len;
    let gateway_mac = EthernetAddress(cfg.gateway_mac());
    let gateway = cfg.gateway();
    device.emit_reply(len, |rx, out| {
        let rx_eth = EthernetFrame::new_unchecked(rx);
        let rx_ip = Ipv4Packet::new_unchecked(rx_eth.payload());
        let mut eth = EthernetFrame::new_unchecked(&mut *out);
        eth.set_dst_addr(rx_eth.src_addr());
        eth.set_src_addr(gateway_mac);
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let repr = Ipv4Repr {
            src_addr: gateway,
            dst_addr: rx_ip.src_addr(),
            next_header: IpProtocol::Icmp,
            payload_len: ip_payload_len,
            hop_limit: HOP_LIMIT,
        };
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        repr.emit(&mut ip, &ChecksumCapabilities::default());
        let mut icmp = Icmpv4Packet::new_unchecked(ip.payload_mut());
        icmp.set_msg_type(Icmpv4Message::DstUnreachable);
        icmp.set_msg_code(Icmpv4DstUnreachable::NetUnreachable.into());
        // Bytes 4..8 are unused for this message and must be zero.
        icmp.set_echo_ident(0);
        icmp.set_echo_seq_no(0);
        icmp.data_mut()[..quoted_len].copy_from_slice(&rx_eth.payload()[..quoted_len]);
        icmp.fill_checksum();
    });
}

/// How many bytes of the datagram in `frame` an ICMP error quotes: its IP header and the
/// first 8 bytes of its payload.
fn quoted_len(frame: &[u8]) -> Option<usize> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    Some(usize::from(ip.header_len()) + ip.payload().len().min(QUOTED_PAYLOAD_LEN))
}
