//! Debugging a slow port forward: the statistics commands of the API socket (`get_stats`,
//! `list_flows`, `list_forwards`), the pcap capture (`start_pcap`, `stop_pcap`, `--pcap`) and the
//! Prometheus endpoint (`--metrics`), checked against what each test really moved.
//!
//! Counters are compared exactly with the bytes the test's own client and server exchanged
//! (whose digests are checked both ways); latencies are checked for where a server's delay
//! lands (first byte, not connect), not for how fast anything is.

mod common;
mod fwd_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fwd_common::*;
use tapsplice::stats::report::{FlowReport, ForwardReport, PcapReport, StatsReport};

/// The guest server's delay before it answers, in the slow-server tests.
const SLOW_MS: u64 = 400;

/// One statistics request; the value under `return` (panics on an error reply).
fn value<T: serde::de::DeserializeOwned>(inst: &Instance, execute: &str) -> T {
    let reply = inst.request(execute);
    let mut v: serde_json::Value =
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{execute}: {e}: {reply}"));
    serde_json::from_value(v["return"].take()).unwrap_or_else(|e| panic!("{execute}: {e}: {reply}"))
}

fn stats(inst: &Instance) -> StatsReport {
    value(inst, r#"{"execute":"get_stats"}"#)
}

fn flows(inst: &Instance) -> Vec<FlowReport> {
    #[derive(serde::Deserialize)]
    struct List {
        flows: Vec<FlowReport>,
    }
    value::<List>(inst, r#"{"execute":"list_flows"}"#).flows
}

fn forwards(inst: &Instance) -> Vec<ForwardReport> {
    #[derive(serde::Deserialize)]
    struct List {
        forwards: Vec<ForwardReport>,
    }
    value::<List>(inst, r#"{"execute":"list_forwards"}"#).forwards
}

/// Polls `get_stats` until `done` holds (flows end a moment after the client saw EOF).
fn stats_when(inst: &Instance, what: &str, done: impl Fn(&StatsReport) -> bool) -> StatsReport {
    let deadline = Instant::now() + SHORT;
    loop {
        let s = stats(inst);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "waited for {what}; stats: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A forward to a guest server that answers `reply_len` bytes after `delay_ms`, `count` times.
fn forward_to_server(
    inst: &Instance,
    count: u32,
    reply_len: u64,
    delay_ms: u64,
) -> (GuestProc, SocketAddr) {
    let mut args = py_tcp_server("0.0.0.0", 0, count, reply_len, 7);
    args.push(delay_ms.to_string());
    let server = inst.guest("guest server", "python3", &args);
    let guest_port = server.port();
    let host_port = inst.add_tcp("127.0.0.1", guest_port);
    (server, SocketAddr::from(([127, 0, 0, 1], host_port)))
}

/// Sends `up` bytes through the forward, gets `down` back, checks both digests at both ends.
fn transfer(server: &GuestProc, addr: SocketAddr, up: u64, down: u64) {
    let got = exchange(addr, up, 11, SHORT).expect("exchange through the forward");
    let (recv, sent) = server_digests(&server.next(SHORT));
    assert_eq!(recv, got.sent, "guest received what the client sent");
    assert_eq!(sent, got.received, "client received what the guest sent");
    assert_eq!((got.sent.len, got.received.len), (up, down));
}

fn exact_counters(path: &str) {
    let Some(bin) = prereqs(&["python3"]) else {
        return;
    };
    let inst = Instance::start(&bin, &[&format!("--forward-path={path}")]);
    let (server, addr) = forward_to_server(&inst, 2, 200_000, 0);
    transfer(&server, addr, 300_000, 200_000);
    transfer(&server, addr, 50_000, 200_000);
    let s = stats_when(&inst, "both connections to end", |s| {
        s.forwards.splice_open == 0 && s.flows.tcp.is_empty()
    });
    assert_eq!(s.flows.bytes_to_guest, 350_000, "{s:#?}");
    assert_eq!(s.flows.bytes_to_host, 400_000, "{s:#?}");
    assert_eq!(s.forwards.accepted, 2);
    let (stack, splice) = if path == "stack" { (2, 0) } else { (0, 2) };
    assert_eq!(
        (s.forwards.via_stack, s.forwards.via_splice),
        (stack, splice)
    );
    if path == "stack" {
        assert_eq!((s.flows.tcp_opened, s.flows.tcp_closed), (2, 2), "{s:#?}");
        assert!(s.tap.frames_in > 0 && s.tap.frames_out > 0);
        assert!(
            s.tap.bytes_in > 400_000 && s.tap.bytes_out > 350_000,
            "{:?}",
            s.tap
        );
    }
    let fwd = &forwards(&inst)[0];
    assert_eq!((fwd.connections, fwd.active, fwd.refused), (2, 0, 0));
    assert_eq!((fwd.connect.count, fwd.first_byte.count), (2, 2));
    assert_eq!(
        s.drops.values().sum::<u64>(),
        s.drops["unsupported"],
        "{:?}",
        s.drops
    );
}

#[test]
fn transfer_counters_are_exact_on_the_stack_path() {
    exact_counters("stack");
}

#[test]
fn transfer_counters_are_exact_on_the_splice_path() {
    exact_counters("splice");
}

/// An open connection whose guest server reads nothing until told: `list_flows` shows its
/// bytes exactly, where they wait, and the latencies of its stages.
fn open_flow_listing(path: &str) {
    let Some(bin) = prereqs(&["python3"]) else {
        return;
    };
    let inst = Instance::start(&bin, &[&format!("--forward-path={path}")]);
    let dir = TempDir::new("tsstats");
    let gate = dir.join("gate");
    let server = inst.guest(
        "gated server",
        "python3",
        &py_mode(
            "gated",
            &["0.0.0.0".into(), "0".into(), gate.display().to_string()],
        ),
    );
    let guest_port = server.port();
    let host_port = inst.add_tcp("127.0.0.1", guest_port);
    let mut client = TcpStream::connect(("127.0.0.1", host_port)).expect("connect");
    let sent = pattern_bytes(3, 100_000);
    client.write_all(&sent).expect("send");
    server.next(SHORT); // accepted
    let deadline = Instant::now() + SHORT;
    let flow = loop {
        let all = flows(&inst);
        if let Some(f) = all.iter().find(|f| f.to_guest.bytes == 100_000) {
            break f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no flow with 100000 bytes to the guest: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let local = client.local_addr().unwrap().to_string();
    assert_eq!(
        (
            flow.proto.as_str(),
            flow.direction.as_str(),
            flow.path.as_str()
        ),
        ("tcp", "inbound", path)
    );
    assert_eq!(flow.host_peer.as_deref(), Some(local.as_str()), "{flow:#?}");
    assert_eq!(flow.forward_id, Some(1));
    assert_eq!(flow.state, "established");
    assert_eq!(flow.to_host.bytes, 0);
    assert_eq!(flow.guest, format!("{GUEST_IP}:{guest_port}"));
    assert!(
        flow.connect_us.is_some() && flow.first_byte_us.is_none(),
        "{flow:#?}"
    );
    assert!(
        flow.rtt_guest_us.is_some() && flow.rtt_host_us.is_some(),
        "{flow:#?}"
    );
    assert!(flow.to_guest.segments.is_some_and(|n| n > 0), "{flow:#?}");
    // Let the server read, then close: every byte arrives, and the digest matches.
    std::fs::write(&gate, b"").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("read to EOF");
    let j = server.next(SHORT);
    assert_eq!(server_digests(&j).0, Digest::of(&sent));
    assert!(rest.is_empty());
}

#[test]
fn list_flows_shows_an_open_stack_flow() {
    open_flow_listing("stack");
}

#[test]
fn list_flows_shows_an_open_spliced_flow() {
    open_flow_listing("splice");
}

fn slow_server(path: &str) {
    let Some(bin) = prereqs(&["python3"]) else {
        return;
    };
    let inst = Instance::start(&bin, &[&format!("--forward-path={path}")]);
    let (server, addr) = forward_to_server(&inst, 3, 1000, SLOW_MS);
    for _ in 0..3 {
        transfer(&server, addr, 100, 1000);
    }
    let fwd = &forwards(&inst)[0];
    assert_eq!(
        (fwd.connect.count, fwd.first_byte.count),
        (3, 3),
        "{fwd:#?}"
    );
    let slow_us = SLOW_MS * 1000;
    assert!(
        fwd.first_byte.p50_us >= slow_us,
        "first byte holds the delay: {fwd:#?}"
    );
    assert!(fwd.first_byte.max_us >= slow_us);
    assert!(
        fwd.connect.p50_us < slow_us / 2,
        "connect does not: {fwd:#?}"
    );
}

#[test]
fn a_slow_server_shows_in_first_byte_not_in_connect_on_the_stack_path() {
    slow_server("stack");
}

#[test]
fn a_slow_server_shows_in_first_byte_not_in_connect_on_the_splice_path() {
    slow_server("splice");
}

/// Reads a classic pcap file: the global header's snaplen and link type, then each record's
/// captured bytes and original length.
fn read_pcap(path: &Path) -> (u32, u32, Vec<(Vec<u8>, u32)>) {
    let data = std::fs::read(path).expect("read the pcap file");
    assert!(data.len() >= 24, "pcap header");
    let u32_at = |d: &[u8], at: usize| u32::from_le_bytes(d[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(&data, 0), 0xa1b2_c3d4, "magic");
    assert_eq!(
        (&data[4..6], &data[6..8]),
        (&[2u8, 0][..], &[4u8, 0][..]),
        "version 2.4"
    );
    let (snaplen, linktype) = (u32_at(&data, 16), u32_at(&data, 20));
    let mut records = Vec::new();
    let mut at = 24;
    while at < data.len() {
        assert!(at + 16 <= data.len(), "record header cut short at {at}");
        let (incl, orig) = (u32_at(&data, at + 8) as usize, u32_at(&data, at + 12));
        assert!(
            at + 16 + incl <= data.len(),
            "record data cut short at {at}"
        );
        records.push((data[at + 16..at + 16 + incl].to_vec(), orig));
        at += 16 + incl;
    }
    (snaplen, linktype, records)
}

/// TCP flags of an IPv4 TCP frame, with its source and destination.
fn tcp_of(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, u8)> {
    if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let tcp = frame.get(14 + ihl..)?;
    let ip =
        |at: usize| std::net::Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
    let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    Some((
        SocketAddr::from((ip(26), port(0))),
        SocketAddr::from((ip(30), port(2))),
        *tcp.get(13)?,
    ))
}

#[test]
fn a_pcap_taken_during_a_transfer_holds_its_handshake() {
    let Some(bin) = prereqs(&["python3", "tcpdump"]) else {
        return;
    };
    let inst = Instance::start(&bin, &["--forward-path=stack"]);
    let dir = TempDir::new("tspcap");
    let file = dir.join("transfer.pcap");
    let (server, addr) = forward_to_server(&inst, 1, 100_000, 0);
    let started: PcapReport = value(
        &inst,
        &format!(
            r#"{{"execute":"start_pcap","arguments":{{"path":"{}","snaplen":128}}}}"#,
            file.display()
        ),
    );
    assert!(started.active && started.snaplen == 128, "{started:?}");
    transfer(&server, addr, 100_000, 100_000);
    stats_when(&inst, "the flow to end", |s| s.flows.tcp.is_empty());
    let stopped: PcapReport = value(&inst, r#"{"execute":"stop_pcap"}"#);
    assert!(
        !stopped.active && stopped.ended.as_deref() == Some("stopped"),
        "{stopped:?}"
    );
    assert_eq!(stopped.dropped, 0);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), stopped.bytes);

    let (snaplen, linktype, records) = read_pcap(&file);
    assert_eq!(
        (snaplen, linktype),
        (128, 1),
        "snaplen and Ethernet link type"
    );
    assert_eq!(records.len() as u64, stopped.frames);
    assert!(
        records
            .iter()
            .all(|(data, orig)| data.len() as u32 == (*orig).min(128))
    );
    let segments: Vec<_> = records.iter().filter_map(|(d, _)| tcp_of(d)).collect();
    let (syn, ack) = (0x02, 0x10);
    let first_syn = segments
        .iter()
        .position(|(_, _, f)| f & (syn | ack) == syn)
        .unwrap_or_else(|| panic!("no SYN among {} TCP frames", segments.len()));
    let (client, guest, _) = segments[first_syn];
    assert_eq!(
        guest.ip().to_string(),
        GUEST_IP,
        "the SYN goes to the guest"
    );
    let synack = segments[first_syn..]
        .iter()
        .position(|&(s, d, f)| s == guest && d == client && f & (syn | ack) == syn | ack)
        .expect("the guest's SYN-ACK follows the SYN");
    assert!(
        segments[first_syn + synack..]
            .iter()
            .any(|&(s, d, f)| s == client && d == guest && f & (syn | ack) == ack),
        "the handshake's ACK follows the SYN-ACK"
    );
    let payload: usize = records.iter().map(|(_, orig)| *orig as usize).sum();
    assert!(
        payload > 200_000,
        "the capture holds the transfer's frames: {payload} bytes"
    );

    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&file)
        .output()
        .expect("run tcpdump");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().count() as u64,
        stopped.frames,
        "tcpdump reads every frame"
    );
    assert!(
        text.contains("Flags [S]") && text.contains("Flags [S.]"),
        "{text}"
    );
}

#[test]
fn a_pcap_stops_at_its_size_limit_and_the_option_captures_from_the_start() {
    let Some(bin) = prereqs(&["python3"]) else {
        return;
    };
    let dir = TempDir::new("tspcap");
    let from_start = dir.join("start.pcap");
    let opt = format!("--pcap={}", from_start.display());
    let inst = Instance::start(&bin, &["--forward-path=stack", &opt]);
    let capped = dir.join("capped.pcap");
    let (server, addr) = forward_to_server(&inst, 1, 200_000, 0);
    // Only one capture at a time: the --pcap one is running.
    let reply = inst.request(&format!(
        r#"{{"execute":"start_pcap","arguments":{{"path":"{}"}}}}"#,
        capped.display()
    ));
    assert_eq!(
        reply,
        format!(
            r#"{{"error":{{"desc":"bad request: start_pcap: already capturing to {}"}}}}"#,
            from_start.display()
        )
    );
    let first: PcapReport = value(&inst, r#"{"execute":"stop_pcap"}"#);
    assert_eq!(first.path, from_start.display().to_string());
    let started: PcapReport = value(
        &inst,
        &format!(
            r#"{{"execute":"start_pcap","arguments":{{"path":"{}","max_bytes":20000}}}}"#,
            capped.display()
        ),
    );
    assert_eq!((started.max_bytes, started.snaplen), (20_000, 262_144));
    transfer(&server, addr, 200_000, 200_000);
    let s = stats_when(&inst, "the capture to end at its limit", |s| {
        s.pcap.as_ref().is_some_and(|p| !p.active)
    });
    let pcap = s.pcap.unwrap();
    assert_eq!(
        pcap.ended.as_deref(),
        Some("size limit reached"),
        "{pcap:?}"
    );
    let size = std::fs::metadata(&capped).unwrap().len();
    assert!(
        size <= 20_000 && size == pcap.bytes,
        "{size} bytes, {pcap:?}"
    );
    assert_eq!(read_pcap(&capped).2.len() as u64, pcap.frames);
    assert!(
        !read_pcap(&from_start).2.is_empty(),
        "--pcap captured from the start"
    );
}

#[test]
fn statistics_commands_refuse_bad_requests_with_json_errors() {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, &[]);
    for (request, desc) in [
        (
            r#"{"execute":"stop_pcap"}"#,
            "stop_pcap: no capture is running",
        ),
        (
            r#"{"execute":"start_pcap","arguments":{"path":"relative.pcap"}}"#,
            "start_pcap: bad arguments.path",
        ),
        (
            r#"{"execute":"start_pcap"}"#,
            "start_pcap: bad arguments.path",
        ),
        (
            r#"{"execute":"start_pcap","arguments":{"path":"/tmp/x.pcap","snaplen":-1}}"#,
            "start_pcap: bad arguments.snaplen",
        ),
        (
            r#"{"execute":"start_pcap","arguments":{"path":"/nonexistent-dir/x.pcap"}}"#,
            "start_pcap: /nonexistent-dir/x.pcap: No such file or directory",
        ),
        (r#"{"execute":"get_statz"}"#, "unknown execute"),
    ] {
        assert_eq!(
            inst.request(request),
            format!(r#"{{"error":{{"desc":"bad request: {desc}"}}}}"#),
            "{request}"
        );
    }
    // Nothing changed: no capture runs, and the instance still answers.
    assert_eq!(stats(&inst).pcap, None);
}

/// The value of one sample line `name{labels} value` of a metrics page.
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{page}"))
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(SHORT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    reply
}

#[test]
fn the_metrics_endpoint_serves_the_same_counters() {
    let Some(bin) = prereqs(&["python3"]) else {
        return;
    };
    let inst = Instance::start(&bin, &["--forward-path=stack", "--metrics=127.0.0.1:0"]);
    let (server, addr) = forward_to_server(&inst, 1, 70_000, 0);
    transfer(&server, addr, 30_000, 70_000);
    let s = stats_when(&inst, "the flow to end", |s| s.flows.tcp.is_empty());
    let at = s.metrics_addr.expect("get_stats names the metrics address");
    assert!(at.starts_with("127.0.0.1:"), "{at}");
    let reply = http_get(&at, "/metrics");
    let (head, page) = reply.split_once("\r\n\r\n").expect("HTTP head");
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(
        metric(page, r#"tapsplice_flow_bytes_total{direction="to_guest"}"#),
        30_000.0
    );
    assert_eq!(
        metric(page, r#"tapsplice_flow_bytes_total{direction="to_host"}"#),
        70_000.0
    );
    assert_eq!(metric(page, "tapsplice_tcp_flows_closed_total"), 1.0);
    assert_eq!(
        metric(page, r#"tapsplice_forward_accepted_total{path="stack"}"#),
        1.0
    );
    let labels = format!(r#"id="1",proto="tcp",host="{addr}",guest="{GUEST_IP}:"#);
    let count = page
        .lines()
        .find(|l| {
            l.starts_with("tapsplice_forward_first_byte_seconds_count{") && l.contains(&labels)
        })
        .unwrap_or_else(|| panic!("no first-byte count for forward 1 in:\n{page}"));
    assert!(count.ends_with(" 1"), "{count}");
    assert!(http_get(&at, "/nothing").starts_with("HTTP/1.0 404"));
}

/// `tapsplice SUBCOMMAND -a API ARGS...`: its stdout, after checking it succeeded.
fn cli(bin: &Path, inst: &Instance, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(&args[..1])
        .arg("-a")
        .arg(&inst.api)
        .args(&args[1..])
        .output()
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tapsplice {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_cli_prints_tables_and_json_of_a_running_instance() {
    let Some(bin) = prereqs(&["python3"]) else {
        return;
    };
    let inst = Instance::start(&bin, &["--forward-path=stack"]);
    let (server, addr) = forward_to_server(&inst, 2, 5_000, 0);
    transfer(&server, addr, 12_345, 5_000);
    stats_when(&inst, "the flow to end", |s| s.flows.tcp.is_empty());

    let table = cli(&bin, &inst, &["stats"]);
    assert!(table.contains("12.1 KiB to guest"), "{table}");
    assert!(table.contains("1 opened, 1 closed"), "{table}");
    let json: StatsReport = serde_json::from_str(&cli(&bin, &inst, &["stats", "--json"]))
        .expect("stats --json is a StatsReport");
    assert_eq!(
        (json.flows.bytes_to_guest, json.flows.bytes_to_host),
        (12_345, 5_000)
    );

    let table = cli(&bin, &inst, &["forwards"]);
    let row = table
        .lines()
        .find(|l| l.contains(&addr.to_string()))
        .unwrap_or_else(|| panic!("no row for {addr}:\n{table}"));
    assert!(row.trim_start().starts_with("1 "), "{row}");
    let json: tapsplice::stats::report::ForwardList =
        serde_json::from_str(&cli(&bin, &inst, &["forwards", "--json"])).expect("forwards --json");
    assert_eq!(json.forwards[0].connections, 1);

    // An open flow shows as a row, with the client as the forward's peer.
    let mut client = TcpStream::connect(addr).expect("connect");
    client.write_all(b"held open").unwrap();
    let deadline = Instant::now() + SHORT;
    let table = loop {
        let table = cli(&bin, &inst, &["flows"]);
        if table.contains("established") {
            break table;
        }
        assert!(Instant::now() < deadline, "no established flow:\n{table}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("tcp") && l.contains("in#1")),
        "{table}"
    );
    let json: tapsplice::stats::report::FlowList =
        serde_json::from_str(&cli(&bin, &inst, &["flows", "--json"])).expect("flows --json");
    assert_eq!(json.flows.len(), 1);
    drop(client);
}

#[test]
fn probe_tells_that_the_guest_server_takes_the_time() {
    let Some(bin) = prereqs(&["python3"]) else {
        return;
    };
    let inst = Instance::start(&bin, &[]);
    let args = py_mode(
        "respond",
        &[
            "0.0.0.0".into(),
            "0".into(),
            "2".into(),
            SLOW_MS.to_string(),
            "pong".into(),
        ],
    );
    let server = inst.guest("answering server", "python3", &args);
    let host_port = inst.add_tcp("127.0.0.1", server.port());
    let target = format!("127.0.0.1:{host_port}");
    let out = cli(
        &bin,
        &inst,
        &["probe", &target, "-n", "2", "--data", "ping", "--json"],
    );
    for _ in 0..2 {
        let j = server.next(SHORT);
        assert_eq!((j.u64("recv_len"), j.u64("sent_len")), (4, 4), "{j:?}");
        assert_eq!(j.str("recv_sha"), Digest::of(b"ping").sha);
    }
    let report: serde_json::Value = serde_json::from_str(&out).expect("probe --json");
    let conns = report["connections"].as_array().expect("connections");
    assert_eq!(conns.len(), 2, "{report:#}");
    for c in conns {
        assert_eq!(c["bytes_received"], 4, "{c:#}");
        assert_eq!(c["tapsplice"]["path"], "splice", "{c:#}");
        let inside = c["tapsplice"]["first_byte_us"]
            .as_u64()
            .expect("first byte inside");
        assert!(inside >= SLOW_MS * 1000, "{c:#}");
        assert!(
            c["client_first_byte_us"].as_u64().unwrap() >= inside,
            "{c:#}"
        );
    }
    let verdict = report["verdict"].as_str().unwrap();
    assert!(verdict.contains("guest's server"), "{verdict}");
}
