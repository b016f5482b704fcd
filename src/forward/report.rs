//! The statistics commands' answers: the instance's totals (`get_stats`), every flow
//! (`list_flows`) and every forward with its latency histograms (`list_forwards`).
//!
//! The forwarder answers them because it serves the API socket and already holds, through
//! [`Ctx`], everything they draw on: the stack's frame counters, the flow table, its own
//! forwards and spliced connections, and the pcap writer.

use std::os::fd::AsFd;

use super::{Ctx, Forwarder, Proto};
use crate::stats::DropReason;
use crate::stats::report::{
    DirectionReport, FlowReport, ForwardReport, ForwardTotals, StatsReport, TapReport,
};
use crate::sys::tcp_info::tcp_info;

/// Linux's TCP states (`tcp_states.h`), by number, as `list_flows` names them.
const KERNEL_TCP_STATES: [&str; 12] = [
    "unknown",
    "established",
    "syn_sent",
    "syn_received",
    "fin_wait_1",
    "fin_wait_2",
    "time_wait",
    "closed",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
];

impl Forwarder {
    pub(super) fn stats_report(&mut self, cx: &mut Ctx<'_>) -> StatsReport {
        let counters = &cx.stack.counters;
        let mut flows = cx.flows.totals();
        flows.udp += self.udp.len() as u64;
        for conn in self.conns.iter().map(|(_, c)| c) {
            *flows.tcp.entry(splice_state(conn)).or_default() += 1;
        }
        let live_splice = self
            .conns
            .iter()
            .fold(self.splice_ended_bytes, |(up, down), (_, c)| {
                (up + c.up.moved, down + c.down.moved)
            });
        let (udp_to_guest, udp_to_client) = self.udp.bytes();
        flows.bytes_to_guest += live_splice.0 + udp_to_guest;
        flows.bytes_to_host += live_splice.1 + udp_to_client;
        let c = &self.counters;
        StatsReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: cx.now.total_millis() as u64,
            tap: TapReport {
                frames_in: counters.frames_in,
                bytes_in: counters.bytes_in,
                frames_out: counters.frames_out,
                bytes_out: counters.bytes_out,
            },
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r.name().to_string(), counters.drops(r)))
                .collect(),
            flows,
            forwards: ForwardTotals {
                count: self.forwards.len() as u64,
                accepted: c.accepted,
                via_stack: c.via_stack,
                via_splice: c.via_splice,
                splice_fallback: c.splice_fallback,
                refused: c.refused,
                splice_open: self.conns.len() as u64,
                udp_flows: self.udp.len() as u64,
                udp_datagrams_in: c.udp_in,
                udp_datagrams_out: c.udp_out,
                udp_dropped: c.udp_dropped,
            },
            api_requests: c.api_requests,
            pcap: cx.capture.report(),
            metrics_addr: self
                .metrics
                .as_ref()
                .and_then(|(l, _)| l.local_addr().ok())
                .map(|a| a.to_string()),
        }
    }

    /// The NAT's flows, then spliced connections, then UDP forward flows.
    pub(super) fn flow_reports(&self, cx: &mut Ctx<'_>) -> Vec<FlowReport> {
        let mut reports = cx.flows.flow_reports(cx.now);
        for (_, conn) in &self.conns {
            let inner = tcp_info(conn.inner.as_fd()).ok();
            let client = tcp_info(conn.client.as_fd()).ok();
            let notsent = |i: &Option<crate::sys::tcp_info::TcpInfo>| {
                i.as_ref().map_or(0, |i| u64::from(i.notsent_bytes))
            };
            reports.push(FlowReport {
                proto: "tcp".into(),
                direction: "inbound".into(),
                forward_id: Some(conn.forward),
                path: "splice".into(),
                guest: addr(conn.inner.peer_addr()),
                remote: addr(conn.inner.local_addr()),
                host_local: conn.client.local_addr().ok().map(|a| a.to_string()),
                host_peer: conn.client.peer_addr().ok().map(|a| a.to_string()),
                state: splice_state(conn),
                age_ms: (cx.now - conn.times.opened).total_millis(),
                to_host: DirectionReport {
                    bytes: conn.down.moved,
                    segments: inner.as_ref().map(|i| u64::from(i.segs_in)),
                    queued: Some(conn.down.held() as u64 + notsent(&client)),
                },
                to_guest: DirectionReport {
                    bytes: conn.up.moved,
                    segments: inner.as_ref().map(|i| u64::from(i.segs_out)),
                    queued: Some(conn.up.held() as u64 + notsent(&inner)),
                },
                retrans_guest: inner.as_ref().map(|i| u64::from(i.total_retrans)),
                retrans_host: client.as_ref().map(|i| u64::from(i.total_retrans)),
                rtt_guest_us: inner.as_ref().map(|i| u64::from(i.rtt_us)),
                rtt_host_us: client.as_ref().map(|i| u64::from(i.rtt_us)),
                connect_us: conn.times.connect_us(),
                first_byte_us: conn.times.first_byte_us(),
            });
        }
        reports.extend(self.udp.reports(cx.now));
        reports
    }

    /// Every forward with its connections and latency percentiles.
    pub(super) fn forward_reports(&mut self, cx: &mut Ctx<'_>) -> Vec<ForwardReport> {
        self.file_samples(cx.flows);
        let mut active = cx.flows.inbound_counts();
        for (_, conn) in &self.conns {
            *active.entry(conn.forward).or_default() += 1;
        }
        self.forwards
            .iter()
            .map(|(&id, fwd)| {
                let entry = super::Entry::new(id, &fwd.spec);
                let stats = &fwd.stats;
                ForwardReport {
                    id,
                    proto: entry.proto.to_string(),
                    host_addr: entry.host_addr,
                    host_port: entry.host_port,
                    guest_addr: entry.guest_addr,
                    guest_port: entry.guest_port,
                    connections: stats.connections,
                    active: match fwd.spec.proto {
                        Proto::Tcp => active.get(&id).copied().unwrap_or(0),
                        Proto::Udp => self.udp.count_of(id),
                    },
                    via_stack: stats.via_stack,
                    via_splice: stats.via_splice,
                    refused: stats.refused,
                    connect: stats.latency.connect.summary(),
                    first_byte: stats.latency.first_byte.summary(),
                }
            })
            .collect()
    }
}

/// The state of the namespace socket of a spliced connection, as the kernel has it.
fn splice_state(conn: &super::splice::SpliceConn) -> String {
    match tcp_info(conn.inner.as_fd()) {
        Ok(info) => KERNEL_TCP_STATES
            .get(usize::from(info.state))
            .unwrap_or(&"unknown")
            .to_string(),
        Err(_) => "unknown".to_string(),
    }
}

fn addr(a: std::io::Result<std::net::SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|_| "-".to_string())
}
