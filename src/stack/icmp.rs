//! ICMP that the stack answers itself: echo replies for the gateway and DNS addresses, and
//! "destination unreachable" for datagrams it refuses (by policy, or because the host side
//! could not deliver them).
//!
//! These are built by hand from the received frame rather than by smoltcp: in any-IP mode
//! smoltcp would answer pings for every address, and it has no notion of refusing a
//! destination by policy. Replies copy what they quote from the guest's frame, so the guest
//! kernel matches them to its socket exactly.

use std::net::Ipv4Addr;

use smoltcp::wire::{
    EthernetAddress, EthernetFrame, Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, IpProtocol,
    Ipv4Packet,
};

use super::device::{ETHERNET_HEADER_LEN, FrameDevice};
use super::emit::{self, Link};
use crate::config::NetConfig;

/// Hop limit of packets the stack originates.
const HOP_LIMIT: u8 = 64;
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

/// Answers the IPv4 datagram held in `device` with ICMP "destination unreachable" (`reason`)
/// from `from`, quoting the datagram's IP header and first 8 payload bytes.
pub fn reply_unreachable(
    device: &mut FrameDevice,
    cfg: &NetConfig,
    from: Ipv4Addr,
    reason: Icmpv4DstUnreachable,
) {
    let Some(frame) = device.received() else {
        return;
    };
    let Some((guest, guest_mac, quote_len)) = quote_of(frame) else {
        return;
    };
    let mut quote = [0u8; MAX_QUOTE_LEN];
    quote[..quote_len].copy_from_slice(&frame[ETHERNET_HEADER_LEN..][..quote_len]);
    let link = Link {
        src: EthernetAddress(cfg.gateway_mac()),
        dst: guest_mac,
    };
    emit::unreachable(device, link, (from, guest), reason, &quote[..quote_len]);
}

/// IPv4 header (at most 60 bytes) plus 8 bytes of payload.
const MAX_QUOTE_LEN: usize = 68;

/// The sender of the datagram in `frame`, its MAC, and how many bytes an ICMP error quotes.
fn quote_of(frame: &[u8]) -> Option<(Ipv4Addr, EthernetAddress, usize)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let len = usize::from(ip.header_len()) + ip.payload().len().min(QUOTED_PAYLOAD_LEN);
    Some((ip.src_addr(), eth.src_addr(), len.min(MAX_QUOTE_LEN)))
}
