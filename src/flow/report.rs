//! The flow table as the statistics commands show it: one [`FlowReport`] per flow and the
//! totals of [`FlowTotals`].
//!
//! Built only when asked (an API request or a metrics scrape), by walking the table once; the
//! data path keeps nothing for it beyond its counters. The host side of a TCP flow is read
//! from the kernel (`TCP_INFO`) at that moment.

use std::os::fd::AsFd;

use smoltcp::time::Instant;

use super::FlowTable;
use crate::stats::Traffic;
use crate::stats::report::{DirectionReport, FlowReport, FlowTotals};
use crate::sys::tcp_info::tcp_info;

impl FlowTable {
    /// Every flow of the NAT: outbound TCP, UDP and ICMP echo, and forwarded TCP on the stack
    /// path.
    pub fn flow_reports(&self, now: Instant) -> Vec<FlowReport> {
        let mut reports = Vec::with_capacity(self.tcp.len() + self.udp.len() + self.echo.len());
        for (_, flow) in &self.tcp {
            let host = tcp_info(flow.host.as_fd()).ok();
            let (from_guest, to_guest) = flow.guest().queued();
            let wire = &flow.guest().wire;
            reports.push(FlowReport {
                proto: "tcp".into(),
                direction: direction(flow.forward).into(),
                forward_id: flow.forward,
                path: "stack".into(),
                guest: flow.key.guest.to_string(),
                remote: flow.key.remote.to_string(),
                host_local: flow.host.local_addr().ok().map(|a| a.to_string()),
                host_peer: flow.host.peer_addr().ok().map(|a| a.to_string()),
                state: flow.state_name(),
                age_ms: (now - flow.times.opened).total_millis(),
                to_host: DirectionReport {
                    bytes: flow.to_host_bytes,
                    segments: Some(wire.segments_in),
                    queued: Some(
                        from_guest as u64 + host.as_ref().map_or(0, |i| u64::from(i.notsent_bytes)),
                    ),
                },
                to_guest: DirectionReport {
                    bytes: flow.to_guest_bytes,
                    segments: Some(wire.segments_out),
                    queued: Some(to_guest as u64),
                },
                retrans_guest: Some(wire.retransmits),
                retrans_host: host.as_ref().map(|i| u64::from(i.total_retrans)),
                rtt_guest_us: wire.srtt_us(),
                rtt_host_us: host.as_ref().map(|i| u64::from(i.rtt_us)),
                connect_us: flow.times.connect_us(),
                first_byte_us: flow.times.first_byte_us(),
            });
        }
        for (_, flow) in &self.udp {
            let age_ms = (now - flow.opened).total_millis();
            reports.push(datagram_report(
                "udp",
                flow.key.guest.to_string(),
                flow.key.remote.to_string(),
                age_ms,
                flow.to_host,
                flow.to_guest,
            ));
        }
        for (_, flow) in &self.echo {
            let (guest, remote, ident) = flow.key;
            let age_ms = (now - flow.opened).total_millis();
            reports.push(datagram_report(
                "icmp",
                format!("{guest} id {ident}"),
                remote.to_string(),
                age_ms,
                flow.to_host,
                flow.to_guest,
            ));
        }
        reports
    }

    /// Forwarded TCP flows open now, by forward.
    pub fn inbound_counts(&self) -> std::collections::HashMap<u64, u64> {
        let mut counts = std::collections::HashMap::new();
        for forward in self.tcp.iter().filter_map(|(_, f)| f.forward) {
            *counts.entry(forward).or_default() += 1;
        }
        counts
    }

    /// Open flows by protocol and state, and what all flows did since start.
    pub fn totals(&self) -> FlowTotals {
        let mut totals = FlowTotals {
            udp: self.udp.len() as u64,
            icmp: self.echo.len() as u64,
            tcp_opened: self.counters.opened,
            tcp_refused: self.counters.refused,
            tcp_reset: self.counters.reset,
            tcp_closed: self.counters.closed,
            udp_opened: self.counters.udp_opened,
            udp_expired: self.counters.udp_expired,
            bytes_to_host: self.counters.bytes_to_host,
            bytes_to_guest: self.counters.bytes_to_guest,
            ..FlowTotals::default()
        };
        for (_, flow) in &self.tcp {
            *totals.tcp.entry(flow.state_name()).or_default() += 1;
            totals.bytes_to_host += flow.to_host_bytes;
            totals.bytes_to_guest += flow.to_guest_bytes;
        }
        let datagram_flows = self.udp.iter().map(|(_, f)| (f.to_host, f.to_guest));
        let echo_flows = self.echo.iter().map(|(_, f)| (f.to_host, f.to_guest));
        for (to_host, to_guest) in datagram_flows.chain(echo_flows) {
            totals.bytes_to_host += to_host.bytes;
            totals.bytes_to_guest += to_guest.bytes;
        }
        totals
    }
}

fn direction(forward: Option<u64>) -> &'static str {
    match forward {
        Some(_) => "inbound",
        None => "outbound",
    }
}

/// A UDP or ICMP flow: datagrams and bytes each way, nothing queued.
pub(crate) fn datagram_report(
    proto: &str,
    guest: String,
    remote: String,
    age_ms: u64,
    to_host: Traffic,
    to_guest: Traffic,
) -> FlowReport {
    let way = |t: Traffic| DirectionReport {
        bytes: t.bytes,
        segments: Some(t.packets),
        queued: None,
    };
    FlowReport {
        proto: proto.into(),
        direction: "outbound".into(),
        path: "stack".into(),
        guest,
        remote,
        state: "active".into(),
        age_ms,
        to_host: way(to_host),
        to_guest: way(to_guest),
        ..FlowReport::default()
    }
}
