//! What the guest side of one TCP flow looks like on the wire: segments each way,
//! retransmissions towards the guest, and the round-trip time to the guest.
//!
//! smoltcp keeps its own RTT estimate and retransmission count private, so these are measured
//! from the frames themselves: every frame the flow's socket queues for the TAP and every frame
//! the guest sends it passes by here, and only their TCP headers are read (a few loads at
//! known offsets). A segment that ends at or before the highest sequence number already sent is
//! a retransmission. The RTT is sampled the way RFC 6298 does it: one segment in flight is
//! timed until an ACK covers it, a retransmission cancels the sample (Karn's rule), and samples
//! are smoothed with a gain of 1/8.

use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
};

/// Wire statistics of one guest TCP socket.
#[derive(Debug, Clone, Default)]
pub struct SegmentStats {
    /// Segments from the guest.
    pub segments_in: u64,
    /// Segments to the guest.
    pub segments_out: u64,
    /// Segments to the guest that carried sequence space sent before.
    pub retransmits: u64,
    /// End of the highest sequence space sent (sequence number, wrapping).
    sent_end: Option<u32>,
    /// The segment being timed: its end and when it left.
    sample: Option<(u32, Instant)>,
    srtt_us: Option<u64>,
}

impl SegmentStats {
    /// The smoothed round-trip time to the guest, once one segment was timed.
    pub fn srtt_us(&self) -> Option<u64> {
        self.srtt_us
    }

    /// A frame from the guest for this flow.
    pub fn on_ingress(&mut self, frame: &[u8], now: Instant) {
        let Some(tcp) = tcp_segment(frame) else {
            return;
        };
        self.segments_in += 1;
        let Some((end, sent_at)) = self.sample else {
            return;
        };
        if tcp.ack && after_or_at(tcp.ack_number, end) {
            let rtt = (now - sent_at).total_micros();
            self.srtt_us = Some(match self.srtt_us {
                None => rtt,
                Some(srtt) => (srtt * 7 + rtt) / 8,
            });
            self.sample = None;
        }
    }

    /// A frame queued for the guest by this flow's socket.
    pub fn on_egress(&mut self, frame: &[u8], now: Instant) {
        let Some(tcp) = tcp_segment(frame) else {
            return;
        };
        self.segments_out += 1;
        if tcp.seq_len == 0 {
            return;
        }
        let end = tcp.seq_number.wrapping_add(tcp.seq_len);
        match self.sent_end {
            Some(sent) if !after(end, sent) || after(sent, tcp.seq_number) => {
                self.retransmits += 1;
                self.sample = None;
                if after(end, sent) {
                    self.sent_end = Some(end);
                }
            }
            _ => {
                self.sent_end = Some(end);
                if self.sample.is_none() {
                    self.sample = Some((end, now));
                }
            }
        }
    }
}

/// The fields of a TCP header that the statistics need.
struct TcpFields {
    seq_number: u32,
    /// Sequence space taken: payload, plus one each for SYN and FIN.
    seq_len: u32,
    ack: bool,
    ack_number: u32,
}

/// The TCP header of an Ethernet frame carrying IPv4 or IPv6 (without extension headers).
fn tcp_segment(frame: &[u8]) -> Option<TcpFields> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let (payload, protocol) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            (ip.payload(), ip.next_header())
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            (ip.payload(), ip.next_header())
        }
        _ => return None,
    };
    if protocol != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(payload).ok()?;
    let data = payload.len().saturating_sub(usize::from(tcp.header_len()));
    Some(TcpFields {
        seq_number: tcp.seq_number().0 as u32,
        seq_len: data as u32 + u32::from(tcp.syn()) + u32::from(tcp.fin()),
        ack: tcp.ack(),
        ack_number: tcp.ack_number().0 as u32,
    })
}

/// `a` comes after `b` in sequence space.
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn after_or_at(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet_packet::ethernet::{EtherTypes, MutableEthernetPacket};
    use pnet_packet::ip::IpNextHeaderProtocols;
    use pnet_packet::ipv4::MutableIpv4Packet;
    use pnet_packet::tcp::{MutableTcpPacket, TcpFlags};

    /// An IPv4 TCP frame built by pnet (the independent implementation).
    fn frame(seq: u32, ack: Option<u32>, flags: u8, payload: usize) -> Vec<u8> {
        let tcp_len = 20 + payload;
        let mut buf = vec![0u8; 14 + 20 + tcp_len];
        {
            let mut eth = MutableEthernetPacket::new(&mut buf).unwrap();
            eth.set_ethertype(EtherTypes::Ipv4);
        }
        {
            let mut ip = MutableIpv4Packet::new(&mut buf[14..]).unwrap();
            ip.set_version(4);
            ip.set_header_length(5);
            ip.set_total_length((20 + tcp_len) as u16);
            ip.set_ttl(64);
            ip.set_next_level_protocol(IpNextHeaderProtocols::Tcp);
        }
        let mut tcp = MutableTcpPacket::new(&mut buf[34..]).unwrap();
        tcp.set_sequence(seq);
        tcp.set_data_offset(5);
        let mut flags = flags;
        if let Some(ack) = ack {
            tcp.set_acknowledgement(ack);
            flags |= TcpFlags::ACK;
        }
        tcp.set_flags(flags);
        buf
    }

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn counts_segments_each_way_and_times_the_first_segment_in_flight() {
        let mut s = SegmentStats::default();
        s.on_egress(&frame(1000, Some(1), 0, 100), at(0));
        s.on_egress(&frame(1100, Some(1), 0, 100), at(1));
        s.on_ingress(&frame(1, Some(1100), 0, 0), at(10));
        assert_eq!((s.segments_out, s.segments_in, s.retransmits), (2, 1, 0));
        assert_eq!(s.srtt_us(), Some(10_000));
    }

    #[test]
    fn an_ack_short_of_the_timed_segment_gives_no_sample() {
        let mut s = SegmentStats::default();
        s.on_egress(&frame(1000, Some(1), 0, 100), at(0));
        s.on_ingress(&frame(1, Some(1050), 0, 0), at(5));
        assert_eq!(s.srtt_us(), None);
    }

    #[test]
    fn later_samples_are_smoothed_with_a_gain_of_one_eighth() {
        let mut s = SegmentStats::default();
        s.on_egress(&frame(0, None, 0, 10), at(0));
        s.on_ingress(&frame(1, Some(10), 0, 0), at(8));
        s.on_egress(&frame(10, None, 0, 10), at(100));
        s.on_ingress(&frame(1, Some(20), 0, 0), at(116));
        assert_eq!(s.srtt_us(), Some((8_000 * 7 + 16_000) / 8));
    }

    #[test]
    fn a_retransmission_is_counted_and_cancels_the_sample() {
        let mut s = SegmentStats::default();
        s.on_egress(&frame(1000, None, 0, 100), at(0));
        s.on_egress(&frame(1000, None, 0, 100), at(300));
        s.on_ingress(&frame(1, Some(1100), 0, 0), at(301));
        assert_eq!(s.retransmits, 1);
        assert_eq!(
            s.srtt_us(),
            None,
            "Karn: a retransmitted segment is not timed"
        );
    }

    #[test]
    fn syn_and_fin_take_sequence_space_and_pure_acks_do_not() {
        let mut s = SegmentStats::default();
        s.on_egress(&frame(u32::MAX, None, TcpFlags::SYN, 0), at(0));
        s.on_egress(&frame(0, Some(5), 0, 0), at(1));
        s.on_egress(&frame(0, Some(5), 0, 0), at(2));
        s.on_ingress(&frame(5, Some(0), 0, 0), at(4));
        assert_eq!(s.retransmits, 0, "pure ACKs are not retransmissions");
        assert_eq!(s.srtt_us(), Some(4_000), "the SYN is timed across the wrap");
        s.on_egress(&frame(0, Some(5), TcpFlags::FIN, 0), at(10));
        s.on_egress(&frame(0, Some(5), TcpFlags::FIN, 0), at(20));
        assert_eq!(s.retransmits, 1);
    }

    #[test]
    fn frames_that_are_not_tcp_or_are_cut_short_are_ignored() {
        let mut s = SegmentStats::default();
        let full = frame(0, None, 0, 10);
        s.on_egress(&full[..40], at(0));
        s.on_ingress(&[0u8; 10], at(0));
        let mut arp = full.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        s.on_egress(&arp, at(0));
        assert_eq!((s.segments_in, s.segments_out), (0, 0));
    }
}
