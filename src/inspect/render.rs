//! The reports of `get_stats`, `list_flows`, `list_forwards` and the pcap commands as text
//! for people.
//!
//! Pure functions from report values to strings, so every layout is tested on canned reports
//! and the commands only fetch and print. The instance summary is a list of labelled lines;
//! flows and forwards are tables, one row each, in the spirit of `ss -ti`.

use super::table::{Column, Table, bytes, duration, host_port, labelled, millis, or_unknown};
use crate::stats::report::{FlowReport, ForwardReport, LatencySummary, PcapReport, StatsReport};

/// `tapsplice stats`: the instance as a whole.
pub fn stats_text(report: &StatsReport) -> String {
    let flows = &report.flows;
    let forwards = &report.forwards;
    let tcp_open: u64 = flows.tcp.values().sum();
    let tcp_states = if tcp_open == 0 {
        "none".to_string()
    } else {
        format!("{} ({tcp_open} open)", nonzero_counts(&flows.tcp))
    };
    let lines = [
        (
            "tapsplice",
            format!("{}, {} API requests", report.version, report.api_requests),
        ),
        ("uptime", duration(report.uptime_ms)),
        ("TAP in", frames(report.tap.frames_in, report.tap.bytes_in)),
        (
            "TAP out",
            frames(report.tap.frames_out, report.tap.bytes_out),
        ),
        ("drops", nonzero_counts(&report.drops)),
        ("TCP flows", tcp_states),
        ("UDP flows", flows.udp.to_string()),
        ("ICMP flows", flows.icmp.to_string()),
        (
            "TCP since start",
            format!(
                "{} opened, {} closed, {} reset, {} refused",
                flows.tcp_opened, flows.tcp_closed, flows.tcp_reset, flows.tcp_refused
            ),
        ),
        (
            "UDP since start",
            format!("{} opened, {} expired", flows.udp_opened, flows.udp_expired),
        ),
        (
            "payload",
            format!(
                "{} to host, {} to guest",
                bytes(flows.bytes_to_host),
                bytes(flows.bytes_to_guest)
            ),
        ),
        (
            "forwards",
            format!(
                "{} in place; {} accepted ({} stack, {} splice, {} fell back to the stack), \
                 {} refused, {} spliced open",
                forwards.count,
                forwards.accepted,
                forwards.via_stack,
                forwards.via_splice,
                forwards.splice_fallback,
                forwards.refused,
                forwards.splice_open
            ),
        ),
        (
            "UDP forwards",
            format!(
                "open flows {}, datagrams {} in, {} out, {} dropped",
                forwards.udp_flows,
                forwards.udp_datagrams_in,
                forwards.udp_datagrams_out,
                forwards.udp_dropped
            ),
        ),
        (
            "pcap",
            report.pcap.as_ref().map_or("none".into(), pcap_line),
        ),
    ];
    labelled(&lines)
}

/// `name count, ...` for the non-zero counts, largest first, or `none`.
fn nonzero_counts<'a>(counts: impl IntoIterator<Item = (&'a String, &'a u64)>) -> String {
    let mut nonzero: Vec<(&String, &u64)> = counts
        .into_iter()
        .filter(|(_, count)| **count > 0)
        .collect();
    if nonzero.is_empty() {
        return "none".into();
    }
    nonzero.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = nonzero
        .iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    parts.join(", ")
}

fn frames(frames: u64, size: u64) -> String {
    format!("{frames} frames, {}", bytes(size))
}

/// The capture in one line of the summary.
fn pcap_line(pcap: &PcapReport) -> String {
    let state = match (&pcap.ended, pcap.active) {
        (_, true) => "capturing to".to_string(),
        (Some(reason), false) => format!("ended ({reason}):"),
        (None, false) => "not capturing:".to_string(),
    };
    format!(
        "{state} {}, {} frames, {}, {} dropped",
        pcap.path,
        pcap.frames,
        bytes(pcap.bytes),
        pcap.dropped
    )
}

/// `tapsplice pcap start|stop`: the capture.
pub fn pcap_text(pcap: &PcapReport) -> String {
    let state = match (&pcap.ended, pcap.active) {
        (_, true) => "capturing".to_string(),
        (Some(reason), false) => format!("ended: {reason}"),
        (None, false) => "not capturing".to_string(),
    };
    let limit = if pcap.max_bytes == 0 {
        "no limit".to_string()
    } else {
        format!("limit {}", bytes(pcap.max_bytes))
    };
    labelled(&[
        ("file", pcap.path.clone()),
        ("state", state),
        (
            "frames",
            format!("{} written, {} dropped", pcap.frames, pcap.dropped),
        ),
        ("size", format!("{} ({limit})", bytes(pcap.bytes))),
        ("snaplen", format!("{} bytes", pcap.snaplen)),
    ])
}

const FLOW_COLUMNS: [Column; 17] = [
    Column::text("PROTO"),
    Column::text("PATH"),
    Column::text("DIR"),
    Column::text("GUEST"),
    Column::text("REMOTE"),
    Column::text("STATE"),
    Column::number("AGE"),
    Column::number("->HOST").under("bytes"),
    Column::number("->GUEST").under("bytes"),
    Column::number("->HOST").under("queued"),
    Column::number("->GUEST").under("queued"),
    Column::number("GUEST").under("rtt ms"),
    Column::number("HOST").under("rtt ms"),
    Column::number("GUEST").under("retrans"),
    Column::number("HOST").under("retrans"),
    Column::number("CONNECT").under("latency ms"),
    Column::number("1ST BYTE").under("latency ms"),
];

/// `tapsplice flows`: one row per flow.
pub fn flows_text(flows: &[FlowReport]) -> String {
    let mut table = Table::new(&FLOW_COLUMNS);
    for flow in flows {
        table.push(vec![
            flow.proto.clone(),
            flow.path.clone(),
            direction(flow),
            flow.guest.clone(),
            flow.remote.clone(),
            flow.state.clone(),
            duration(flow.age_ms),
            bytes(flow.to_host.bytes),
            bytes(flow.to_guest.bytes),
            or_unknown(flow.to_host.queued, bytes),
            or_unknown(flow.to_guest.queued, bytes),
            or_unknown(flow.rtt_guest_us, millis),
            or_unknown(flow.rtt_host_us, millis),
            or_unknown(flow.retrans_guest, |n| n.to_string()),
            or_unknown(flow.retrans_host, |n| n.to_string()),
            or_unknown(flow.connect_us, millis),
            or_unknown(flow.first_byte_us, millis),
        ]);
    }
    with_empty_note(&table, "no flows")
}

/// `out`, or `in#ID` for a forward's client.
fn direction(flow: &FlowReport) -> String {
    match (flow.direction.as_str(), flow.forward_id) {
        ("outbound", _) => "out".into(),
        ("inbound", Some(id)) => format!("in#{id}"),
        ("inbound", None) => "in".into(),
        (other, _) => other.into(),
    }
}

const FORWARD_COLUMNS: [Column; 17] = [
    Column::number("ID"),
    Column::text("PROTO"),
    Column::text("HOST"),
    Column::text("GUEST"),
    Column::number("CONNS"),
    Column::number("ACTIVE"),
    Column::number("STACK"),
    Column::number("SPLICE"),
    Column::number("REFUSED"),
    Column::number("P50").under("connect ms"),
    Column::number("P90").under("connect ms"),
    Column::number("P99").under("connect ms"),
    Column::number("MAX").under("connect ms"),
    Column::number("P50").under("first byte ms"),
    Column::number("P90").under("first byte ms"),
    Column::number("P99").under("first byte ms"),
    Column::number("MAX").under("first byte ms"),
];

/// `tapsplice forwards`: one row per forward.
pub fn forwards_text(forwards: &[ForwardReport]) -> String {
    let mut table = Table::new(&FORWARD_COLUMNS);
    for forward in forwards {
        let mut row = vec![
            forward.id.to_string(),
            forward.proto.clone(),
            host_port(&forward.host_addr, forward.host_port),
            host_port(&forward.guest_addr, forward.guest_port),
            forward.connections.to_string(),
            forward.active.to_string(),
            forward.via_stack.to_string(),
            forward.via_splice.to_string(),
            forward.refused.to_string(),
        ];
        row.extend(percentiles(&forward.connect));
        row.extend(percentiles(&forward.first_byte));
        table.push(row);
    }
    with_empty_note(&table, "no forwards")
}

/// p50, p90, p99 and max in milliseconds, or unknown when nothing was measured.
fn percentiles(summary: &LatencySummary) -> [String; 4] {
    let measured = (summary.count > 0).then_some(summary);
    [
        or_unknown(measured, |s| millis(s.p50_us)),
        or_unknown(measured, |s| millis(s.p90_us)),
        or_unknown(measured, |s| millis(s.p99_us)),
        or_unknown(measured, |s| millis(s.max_us)),
    ]
}

fn with_empty_note(table: &Table, note: &str) -> String {
    let mut text = table.render();
    if table.is_empty() {
        text.push_str(note);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::testkit::{sample_flows, sample_forwards, sample_pcap, sample_stats};

    /// Where each title starts on the title line; every row must have its cells end (numbers)
    /// or start (text) at the same places.
    fn assert_aligned(text: &str, first_number_column: &str) {
        let lines: Vec<&str> = text.lines().collect();
        let title = lines[1];
        let edge = title.find(first_number_column).unwrap() + first_number_column.len();
        for row in &lines[2..] {
            let before = &row[..edge];
            assert!(
                !before.ends_with(' '),
                "row {row:?} does not end a number at column {edge}"
            );
            assert!(
                row.len() == edge || row.as_bytes()[edge] == b' ',
                "row {row:?} overflows its column at {edge}"
            );
        }
    }

    #[test]
    fn the_summary_shows_every_figure_in_readable_units() {
        let text = stats_text(&sample_stats());
        println!("{text}");
        let expected = "\
tapsplice        0.1.0, 42 API requests
uptime           2h05m
TAP in           120345 frames, 23.1 MiB
TAP out          98765 frames, 3.4 MiB
drops            unsupported 17, no_flow 3
TCP flows        established 4, time_wait 2 (6 open)
UDP flows        3
ICMP flows       0
TCP since start  120 opened, 109 closed, 5 reset, 2 refused
UDP since start  40 opened, 37 expired
payload          1.5 MiB to host, 23.1 MiB to guest
forwards         2 in place; 50 accepted (30 stack, 20 splice, 0 fell back to the stack), 1 refused, 2 spliced open
UDP forwards     open flows 1, datagrams 100 in, 98 out, 0 dropped
pcap             capturing to /tmp/guest.pcap, 1234 frames, 456.0 KiB, 2 dropped
";
        assert_eq!(text, expected);
    }

    #[test]
    fn the_summary_says_none_for_no_drops_no_flows_no_capture() {
        let mut report = sample_stats();
        report.drops.values_mut().for_each(|count| *count = 0);
        report.flows.tcp.clear();
        report.flows.tcp.insert("established".into(), 0);
        report.pcap = None;
        let text = stats_text(&report);
        assert!(text.contains("\ndrops            none\n"), "{text}");
        assert!(text.contains("\nTCP flows        none\n"), "{text}");
        assert!(text.ends_with("\npcap             none\n"), "{text}");
    }

    #[test]
    fn a_finished_capture_says_why_it_ended() {
        let mut pcap = sample_pcap();
        pcap.active = false;
        pcap.ended = Some("size limit reached".into());
        pcap.max_bytes = 0;
        assert_eq!(
            pcap_line(&pcap),
            "ended (size limit reached): /tmp/guest.pcap, 1234 frames, 456.0 KiB, 2 dropped"
        );
        let text = pcap_text(&pcap);
        assert!(
            text.contains("state    ended: size limit reached\n"),
            "{text}"
        );
        assert!(text.contains("size     456.0 KiB (no limit)\n"), "{text}");
    }

    #[test]
    fn the_capture_report_is_labelled_lines() {
        let text = pcap_text(&sample_pcap());
        println!("{text}");
        assert_eq!(
            text,
            "\
file     /tmp/guest.pcap
state    capturing
frames   1234 written, 2 dropped
size     456.0 KiB (limit 100.0 MiB)
snaplen  65535 bytes
"
        );
    }

    #[test]
    fn flows_are_one_aligned_row_each_with_dashes_for_null() {
        let text = flows_text(&sample_flows());
        println!("{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + 3);
        assert!(lines[0].contains("- bytes -"), "{}", lines[0]);
        assert!(lines[0].contains("- latency ms -"), "{}", lines[0]);
        assert!(
            lines[1].starts_with("PROTO  PATH    DIR   GUEST"),
            "{}",
            lines[1]
        );
        // Text columns start together.
        let guest = lines[1].find("GUEST").unwrap();
        let remote = lines[1].find("REMOTE").unwrap();
        for row in &lines[2..] {
            assert_ne!(row.as_bytes()[guest], b' ', "{row}");
            assert_eq!(row.as_bytes()[guest - 1], b' ', "{row}");
            assert_ne!(row.as_bytes()[remote], b' ', "{row}");
        }
        assert_aligned(&text, "AGE");
        let outbound: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            outbound,
            [
                "tcp",
                "stack",
                "out",
                "10.0.2.100:43210",
                "93.184.216.34:443",
                "established",
                "4m10s",
                "1.5",
                "KiB",
                "23.1",
                "MiB",
                "0",
                "B",
                "64.0",
                "KiB",
                "0.045",
                "12.3",
                "0",
                "3",
                "25.1",
                "80.2",
            ]
        );
        let inbound: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            inbound,
            [
                "tcp",
                "splice",
                "in#1",
                "10.0.2.100:80",
                "10.0.2.2:39876",
                "established",
                "850ms",
                "18",
                "B",
                "0",
                "B",
                "-",
                "-",
                "-",
                "0.030",
                "-",
                "-",
                "0.120",
                "-",
            ]
        );
        assert!(lines[4].starts_with("udp    stack   out   [fd00::100]:5353"));
        let udp: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            udp[7..],
            [
                "64", "B", "512", "B", "-", "-", "-", "-", "-", "-", "-", "-"
            ]
        );
    }

    #[test]
    fn no_flows_is_said() {
        let text = flows_text(&[]);
        assert!(text.ends_with("1ST BYTE\nno flows\n"), "{text}");
    }

    #[test]
    fn forwards_show_latency_percentiles_in_milliseconds() {
        let text = forwards_text(&sample_forwards());
        println!("{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].contains("- connect ms -"), "{}", lines[0]);
        assert!(lines[0].contains("- first byte ms -"), "{}", lines[0]);
        assert_aligned(&text, "ID");
        assert_aligned(&text, "REFUSED");
        let tcp: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            tcp,
            [
                "1",
                "tcp",
                "127.0.0.1:8080",
                "10.0.2.100:80",
                "48",
                "2",
                "28",
                "20",
                "1",
                "0.095",
                "0.210",
                "1.23",
                "4.05",
                "502",
                "510",
                "530",
                "1601",
            ]
        );
        let udp: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            udp,
            [
                "2",
                "udp",
                "[::]:5353",
                "10.0.2.100:53",
                "2",
                "1",
                "2",
                "0",
                "0",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
            ]
        );
    }
}
