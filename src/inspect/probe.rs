//! `tapsplice probe`: where the time of a request through a port forward goes.
//!
//! A slow answer through a forward can come from three places: the host side (the client's
//! connect to tapsplice's listener and tapsplice's own handling), tapsplice's connect to the
//! guest, or the guest's server. The client alone cannot tell them apart, and tapsplice alone
//! does not see what the client sees. So the probe opens real connections, times them at the
//! client, and while each is still open asks the API for the flow whose host peer is the
//! probe's own socket, whose `connect_us` (accept until the guest's SYN-ACK) and
//! `first_byte_us` (request in until response out) are measured inside tapsplice. The
//! difference between the client's first byte and tapsplice's is the overhead outside the
//! guest.
//!
//! The measuring ([`run`]) is plain blocking I/O; matching flows, summarising and the verdict
//! are pure functions of the collected figures, tested on canned data.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::ApiClient;
use super::describe_io;
use super::table::{Column, Table, latency, millis, or_unknown};
use crate::stats::report::FlowReport;

/// Bytes read at a time from the server.
const READ_CHUNK: usize = 16 * 1024;

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// `HOST:PORT` as given.
    pub target: String,
    /// What it resolved to, tried in order on each connection, as `connect()` in a client
    /// library would: `localhost` may name `::1` and `127.0.0.1`, and only one may listen.
    pub addresses: Vec<SocketAddr>,
    /// Connections, made one after another.
    pub count: u32,
    /// Sent on each connection; empty: wait for the server to speak first.
    pub data: Vec<u8>,
    /// Longest wait for a connect, for the first byte, and for the rest of the answer.
    pub timeout: Duration,
}

/// Everything the probe found, as printed (or serialised by `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub target: String,
    pub bytes_sent: usize,
    pub connections: Vec<ProbeConnection>,
    pub stages: Vec<StageSummary>,
    pub verdict: String,
}

impl ProbeReport {
    /// At least one connection was made.
    pub fn connected(&self) -> bool {
        self.connections
            .iter()
            .any(|c| c.client_connect_us.is_some())
    }
}

/// One connection's figures; a figure that could not be taken is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProbeConnection {
    /// From 1.
    pub index: u32,
    /// The probe socket's own address: what tapsplice sees as the flow's host peer.
    pub local: Option<String>,
    /// `connect()` as the client timed it.
    pub client_connect_us: Option<u64>,
    /// From sending the request (or from the connect, when nothing is sent) to the first byte
    /// of the answer, as the client timed it.
    pub client_first_byte_us: Option<u64>,
    /// The same connection as tapsplice recorded it.
    pub tapsplice: Option<InsideFigures>,
    /// The client's first byte minus tapsplice's: time spent outside the guest.
    pub overhead_us: Option<u64>,
    pub bytes_received: u64,
    /// What stopped the measurement (refused, timed out, closed without an answer).
    pub error: Option<String>,
    /// What else there is to know: tapsplice had no record, the answer did not end in time.
    pub notes: Vec<String>,
}

/// tapsplice's own figures of a probe connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InsideFigures {
    /// `stack` or `splice`.
    pub path: String,
    pub forward_id: Option<u64>,
    /// Accept until the guest's SYN-ACK.
    pub connect_us: Option<u64>,
    /// The request in until the first response byte out: the guest and the path to it.
    pub first_byte_us: Option<u64>,
}

/// A stage of a request, as the summary and the verdict name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    ClientConnect,
    GuestConnect,
    ClientFirstByte,
    InsideFirstByte,
    Overhead,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::ClientConnect,
        Stage::GuestConnect,
        Stage::ClientFirstByte,
        Stage::InsideFirstByte,
        Stage::Overhead,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Stage::ClientConnect => "client connect",
            Stage::GuestConnect => "tapsplice->guest connect",
            Stage::ClientFirstByte => "first byte at client",
            Stage::InsideFirstByte => "first byte inside",
            Stage::Overhead => "overhead",
        }
    }

    /// This stage's figure for one connection.
    fn figure(self, connection: &ProbeConnection) -> Option<u64> {
        let inside = connection.tapsplice.as_ref();
        match self {
            Stage::ClientConnect => connection.client_connect_us,
            Stage::GuestConnect => inside.and_then(|t| t.connect_us),
            Stage::ClientFirstByte => connection.client_first_byte_us,
            Stage::InsideFirstByte => inside.and_then(|t| t.first_byte_us),
            Stage::Overhead => connection.overhead_us,
        }
    }
}

/// One stage over all connections that have its figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StageSummary {
    pub stage: Stage,
    pub count: usize,
    pub min_us: u64,
    pub p50_us: u64,
    pub max_us: u64,
}

/// Probes `options.count` connections one after another and sums them up.
pub fn run(api: &ApiClient, options: &ProbeOptions) -> ProbeReport {
    let connections: Vec<ProbeConnection> = (1..=options.count)
        .map(|index| probe_once(api, options, index))
        .collect();
    summarise(options.target.clone(), options.data.len(), connections)
}

/// The report of a set of measured connections.
pub fn summarise(
    target: String,
    bytes_sent: usize,
    connections: Vec<ProbeConnection>,
) -> ProbeReport {
    let stages = Stage::ALL
        .into_iter()
        .filter_map(|stage| summarise_stage(stage, &connections))
        .collect();
    let verdict = verdict(&connections);
    ProbeReport {
        target,
        bytes_sent,
        connections,
        stages,
        verdict,
    }
}

fn probe_once(api: &ApiClient, options: &ProbeOptions, index: u32) -> ProbeConnection {
    let mut connection = ProbeConnection {
        index,
        ..ProbeConnection::default()
    };
    let started = Instant::now();
    let mut stream = match connect(&options.addresses, options.timeout) {
        Ok(stream) => stream,
        Err(err) => {
            connection.error = Some(format!("connect: {err}"));
            return connection;
        }
    };
    connection.client_connect_us = Some(micros(started.elapsed()));
    let local = stream.local_addr().ok();
    connection.local = local.map(|addr| addr.to_string());
    if let Err(err) = stream
        .set_read_timeout(Some(options.timeout))
        .and_then(|()| stream.set_write_timeout(Some(options.timeout)))
    {
        connection.error = Some(format!("socket: {}", describe_io(&err)));
        return connection;
    }

    let asked = Instant::now();
    let mut buffer = vec![0u8; READ_CHUNK];
    match stream.write_all(&options.data) {
        Err(err) => connection.error = Some(format!("send: {}", describe_io(&err))),
        Ok(()) => match stream.read(&mut buffer) {
            Ok(0) => connection.error = Some("closed without answering".into()),
            Ok(n) => {
                connection.client_first_byte_us = Some(micros(asked.elapsed()));
                connection.bytes_received = n as u64;
            }
            Err(err) if is_timeout(&err) => {
                connection.error = Some(format!(
                    "no answer within {}",
                    latency(micros(options.timeout))
                ));
            }
            Err(err) => connection.error = Some(format!("receive: {}", describe_io(&err))),
        },
    }

    // tapsplice forgets a flow once it is closed: ask while this one is open.
    match (local, api.flows()) {
        (None, _) => connection.notes.push("no local address to look up".into()),
        (_, Err(err)) => connection.notes.push(format!("API: {err}")),
        (Some(local), Ok(flows)) => match find_flow(&flows, local) {
            Some(flow) => {
                connection.tapsplice = Some(InsideFigures {
                    path: flow.path.clone(),
                    forward_id: flow.forward_id,
                    connect_us: flow.connect_us,
                    first_byte_us: flow.first_byte_us,
                })
            }
            None => connection
                .notes
                .push("tapsplice has no record of this connection".into()),
        },
    }
    connection.overhead_us = connection
        .client_first_byte_us
        .zip(connection.tapsplice.as_ref().and_then(|t| t.first_byte_us))
        .map(|(client, inside)| client.saturating_sub(inside));

    if connection.client_first_byte_us.is_some() {
        read_rest(&mut stream, &mut buffer, options.timeout, &mut connection);
    }
    connection
}

/// A connection to the first of `addresses` that takes one, or the last one's error.
fn connect(addresses: &[SocketAddr], timeout: Duration) -> Result<TcpStream, String> {
    let mut last = "no address".to_string();
    for address in addresses {
        match TcpStream::connect_timeout(address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = describe_io(&err),
        }
    }
    Err(last)
}

/// Reads the rest of the answer until EOF, for at most `timeout`.
fn read_rest(
    stream: &mut TcpStream,
    buffer: &mut [u8],
    timeout: Duration,
    connection: &mut ProbeConnection,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            connection.notes.push(format!(
                "answer still open after {}",
                latency(micros(timeout))
            ));
            return;
        }
        match stream.read(buffer) {
            Ok(0) => return,
            Ok(n) => connection.bytes_received += n as u64,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if is_timeout(&err) => {}
            Err(err) => {
                connection
                    .notes
                    .push(format!("receive: {}", describe_io(&err)));
                return;
            }
        }
    }
}

fn is_timeout(err: &std::io::Error) -> bool {
    matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// The inbound flow whose host peer is the probe socket `local`. Addresses are compared as
/// addresses, so `[::ffff:127.0.0.1]:N` (a dual-stack listener's view) matches `127.0.0.1:N`.
pub fn find_flow(flows: &[FlowReport], local: SocketAddr) -> Option<&FlowReport> {
    let wanted = unmapped(local);
    flows.iter().find(|flow| {
        flow.direction == "inbound"
            && flow
                .host_peer
                .as_deref()
                .and_then(|peer| peer.parse::<SocketAddr>().ok())
                .is_some_and(|peer| unmapped(peer) == wanted)
    })
}

fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn summarise_stage(stage: Stage, connections: &[ProbeConnection]) -> Option<StageSummary> {
    let mut figures: Vec<u64> = connections.iter().filter_map(|c| stage.figure(c)).collect();
    figures.sort_unstable();
    Some(StageSummary {
        stage,
        count: figures.len(),
        min_us: *figures.first()?,
        p50_us: figures[(figures.len() - 1) / 2],
        max_us: *figures.last()?,
    })
}

fn median(stage: Stage, connections: &[ProbeConnection]) -> Option<u64> {
    summarise_stage(stage, connections).map(|summary| summary.p50_us)
}

/// One sentence saying which stage takes the time, judged on the medians.
///
/// The client's wait from the start of `connect()` to the first byte is the total. Inside
/// tapsplice, the first byte includes the connect to the guest when the request arrived
/// before the guest had answered the SYN, so the guest's server is given the first byte
/// inside less the connect to the guest.
pub fn verdict(connections: &[ProbeConnection]) -> String {
    let Some(client_connect) = median(Stage::ClientConnect, connections) else {
        let why = connections
            .iter()
            .find_map(|c| c.error.clone())
            .unwrap_or_else(|| "none was tried".into());
        return format!("no connection was made ({why})");
    };
    let client_first_byte = median(Stage::ClientFirstByte, connections);
    if connections.iter().all(|c| c.tapsplice.is_none()) {
        let first_byte = or_unknown(client_first_byte, latency);
        return format!(
            "tapsplice had no record of these connections (is the target a forward of this \
             tapsplice?); at the client: connect {}, first byte {first_byte}",
            latency(client_connect)
        );
    }
    let Some(client_first_byte) = client_first_byte else {
        let why = connections
            .iter()
            .find_map(|c| c.error.clone())
            .unwrap_or_else(|| "nothing was read".into());
        return format!(
            "connected (client connect {}), but no answer came back ({why})",
            latency(client_connect)
        );
    };
    let total = client_connect + client_first_byte;
    let Some(inside) = median(Stage::InsideFirstByte, connections) else {
        return format!(
            "tapsplice did not time a first byte (did the client send nothing?); at the \
             client: connect {}, first byte {}",
            latency(client_connect),
            latency(client_first_byte)
        );
    };
    let guest_connect = median(Stage::GuestConnect, connections).unwrap_or(0);
    let overhead = median(Stage::Overhead, connections).unwrap_or(0);
    let of_total = |figure: u64| format!("{} of {}", latency(figure), latency(total));
    let shares = [
        (
            client_connect,
            format!(
                "the client's connect to tapsplice's listener (client connect: {})",
                of_total(client_connect)
            ),
        ),
        (
            guest_connect,
            format!(
                "tapsplice's connect to the guest (tapsplice->guest connect: {})",
                of_total(guest_connect)
            ),
        ),
        (
            inside.saturating_sub(guest_connect),
            format!(
                "the guest's server answering (first byte inside tapsplice: {})",
                of_total(inside)
            ),
        ),
        (
            overhead,
            format!(
                "outside the guest, between the client and tapsplice (overhead: {})",
                of_total(overhead)
            ),
        ),
    ];
    let (largest, phrase) = shares
        .into_iter()
        .max_by_key(|(figure, _)| *figure)
        .expect("four stages");
    if largest * 2 > total {
        format!("most of the time is {phrase}")
    } else {
        format!("no stage dominates; the largest is {phrase}")
    }
}

/// The report as text: a row per connection, a row per stage, the verdict.
pub fn report_text(report: &ProbeReport) -> String {
    let mut text = format!(
        "probe {}: {} connections, {} bytes sent on each\n\n",
        report.target,
        report.connections.len(),
        report.bytes_sent
    );
    let mut table = Table::new(&[
        Column::number("#"),
        Column::text("LOCAL"),
        Column::number("CLIENT").under("connect ms"),
        Column::number("TO GUEST").under("connect ms"),
        Column::number("CLIENT").under("first byte ms"),
        Column::number("INSIDE").under("first byte ms"),
        Column::number("OVERHEAD").under("first byte ms"),
        Column::text("PATH"),
        Column::number("BYTES"),
        Column::text("NOTE"),
    ]);
    for c in &report.connections {
        let inside = c.tapsplice.as_ref();
        let mut notes: Vec<&str> = c.error.iter().map(String::as_str).collect();
        notes.extend(c.notes.iter().map(String::as_str));
        table.push(vec![
            c.index.to_string(),
            or_unknown(c.local.clone(), |local| local),
            or_unknown(c.client_connect_us, millis),
            or_unknown(inside.and_then(|t| t.connect_us), millis),
            or_unknown(c.client_first_byte_us, millis),
            or_unknown(inside.and_then(|t| t.first_byte_us), millis),
            or_unknown(c.overhead_us, millis),
            or_unknown(inside, |t| t.path.clone()),
            c.bytes_received.to_string(),
            notes.join("; "),
        ]);
    }
    text.push_str(&table.render());
    text.push('\n');

    let mut stages = Table::new(&[
        Column::text("STAGE"),
        Column::number("N"),
        Column::number("MIN").under("ms"),
        Column::number("P50").under("ms"),
        Column::number("MAX").under("ms"),
    ]);
    for stage in Stage::ALL {
        let summary = report.stages.iter().find(|s| s.stage == stage);
        stages.push(vec![
            stage.label().to_string(),
            summary.map_or(0, |s| s.count).to_string(),
            or_unknown(summary, |s| millis(s.min_us)),
            or_unknown(summary, |s| millis(s.p50_us)),
            or_unknown(summary, |s| millis(s.max_us)),
        ]);
    }
    text.push_str(&stages.render());
    text.push_str(&format!("\n{}\n", report.verdict));
    text
}

/// `--data` with `\r`, `\n`, `\t`, `\0` and `\\` turned into the bytes they name; any other
/// backslash stays as it is.
pub fn unescape(text: &str) -> Vec<u8> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::thread;

    use serde_json::json;

    use super::*;
    use crate::inspect::testkit::{FakeApi, sample_flows};

    fn inbound(peer: &str, connect_us: u64, first_byte_us: Option<u64>) -> FlowReport {
        FlowReport {
            proto: "tcp".into(),
            direction: "inbound".into(),
            forward_id: Some(7),
            path: "stack".into(),
            host_peer: Some(peer.into()),
            state: "established".into(),
            connect_us: Some(connect_us),
            first_byte_us,
            ..FlowReport::default()
        }
    }

    fn measured(
        index: u32,
        client_connect: u64,
        guest_connect: u64,
        client_first: u64,
        inside_first: u64,
    ) -> ProbeConnection {
        ProbeConnection {
            index,
            local: Some(format!("127.0.0.1:{}", 40000 + index)),
            client_connect_us: Some(client_connect),
            client_first_byte_us: Some(client_first),
            tapsplice: Some(InsideFigures {
                path: "stack".into(),
                forward_id: Some(1),
                connect_us: Some(guest_connect),
                first_byte_us: Some(inside_first),
            }),
            overhead_us: Some(client_first - inside_first),
            bytes_received: 612,
            ..ProbeConnection::default()
        }
    }

    #[test]
    fn the_flow_is_found_by_its_host_peer_and_direction() {
        let mut flows = sample_flows();
        // An outbound flow with the same peer text must not match.
        let mut outbound = inbound("127.0.0.1:40001", 1, None);
        outbound.direction = "outbound".into();
        flows.push(outbound);
        flows.push(inbound("127.0.0.1:40001", 150, Some(200_000)));
        flows.push(inbound("[::1]:40002", 160, None));
        flows.push(inbound("[::ffff:127.0.0.1]:40003", 170, None));

        let found = find_flow(&flows, "127.0.0.1:40001".parse().unwrap()).unwrap();
        assert_eq!(found.connect_us, Some(150));
        let found = find_flow(&flows, "[::1]:40002".parse().unwrap()).unwrap();
        assert_eq!(found.connect_us, Some(160));
        let found = find_flow(&flows, "127.0.0.1:40003".parse().unwrap()).unwrap();
        assert_eq!(found.connect_us, Some(170));
        assert!(find_flow(&flows, "127.0.0.1:40009".parse().unwrap()).is_none());
        // The canned inbound flow.
        let found = find_flow(&flows, "127.0.0.1:39876".parse().unwrap()).unwrap();
        assert_eq!(found.path, "splice");
    }

    #[test]
    fn a_slow_guest_server_is_named() {
        let connections = vec![
            measured(1, 80, 120, 503_000, 502_000),
            measured(2, 90, 130, 503_500, 502_400),
            measured(3, 70, 110, 504_000, 502_900),
        ];
        let report = summarise("127.0.0.1:8080".into(), 18, connections);
        assert_eq!(
            report.verdict,
            "most of the time is the guest's server answering \
             (first byte inside tapsplice: 502 ms of 504 ms)"
        );
        let overhead = report
            .stages
            .iter()
            .find(|s| s.stage == Stage::Overhead)
            .unwrap();
        assert_eq!(
            (
                overhead.count,
                overhead.min_us,
                overhead.p50_us,
                overhead.max_us
            ),
            (3, 1000, 1100, 1100)
        );
        let text = report_text(&report);
        println!("{text}");
        assert!(text.starts_with("probe 127.0.0.1:8080: 3 connections, 18 bytes sent on each\n"));
        let inside = text
            .lines()
            .find(|l| l.starts_with("first byte inside"))
            .unwrap();
        assert!(inside.ends_with("  3    502    502    503"), "{inside}");
        assert!(text.ends_with("of 504 ms)\n"));
    }

    #[test]
    fn a_slow_guest_connect_and_a_slow_host_side_are_named() {
        let report = summarise(
            "t".into(),
            1,
            vec![measured(1, 50, 300_000, 301_000, 300_500)],
        );
        assert_eq!(
            report.verdict,
            "most of the time is tapsplice's connect to the guest \
             (tapsplice->guest connect: 300 ms of 301 ms)"
        );
        let report = summarise("t".into(), 1, vec![measured(1, 50, 100, 90_000, 1_000)]);
        assert!(
            report
                .verdict
                .starts_with("most of the time is outside the guest")
        );
        let report = summarise(
            "t".into(),
            1,
            vec![measured(1, 40_000, 100, 50_000, 30_000)],
        );
        assert!(
            report
                .verdict
                .starts_with("no stage dominates; the largest is the client's connect"),
            "{}",
            report.verdict
        );
    }

    #[test]
    fn failures_and_missing_records_are_said_plainly() {
        let refused = ProbeConnection {
            index: 1,
            error: Some("connect: Connection refused".into()),
            ..ProbeConnection::default()
        };
        let report = summarise("t".into(), 0, vec![refused]);
        assert_eq!(
            report.verdict,
            "no connection was made (connect: Connection refused)"
        );
        assert!(!report.connected());
        assert!(report.stages.is_empty());

        let mut unknown = measured(1, 80, 0, 5_000, 0);
        unknown.tapsplice = None;
        unknown.overhead_us = None;
        unknown.notes = vec!["tapsplice has no record of this connection".into()];
        let report = summarise("t".into(), 18, vec![unknown]);
        assert!(report.connected());
        assert_eq!(
            report.verdict,
            "tapsplice had no record of these connections (is the target a forward of this \
             tapsplice?); at the client: connect 0.080 ms, first byte 5.00 ms"
        );
        let text = report_text(&report);
        println!("{text}");
        assert!(text.contains("tapsplice has no record of this connection"));
        let row = text.lines().find(|l| l.starts_with("1  ")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &cells[..9],
            [
                "1",
                "127.0.0.1:40001",
                "0.080",
                "-",
                "5.00",
                "-",
                "-",
                "-",
                "612"
            ]
        );
    }

    #[test]
    fn data_escapes_are_interpreted() {
        assert_eq!(
            unescape(r"GET / HTTP/1.0\r\n\r\n"),
            b"GET / HTTP/1.0\r\n\r\n"
        );
        assert_eq!(unescape(r"a\tb\\c\0\q\"), b"a\tb\\c\0\\q\\");
        assert_eq!(unescape(""), b"");
    }

    /// A server that answers 200 ms after the request, and an API that reports the flow of
    /// whichever client the server saw last.
    #[test]
    fn probing_a_slow_server_end_to_end() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap();
        let peer: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let seen = Arc::clone(&peer);
        thread::spawn(move || {
            for stream in server.incoming().take(2) {
                let mut stream = stream.unwrap();
                *seen.lock().unwrap() = Some(stream.peer_addr().unwrap());
                let mut request = [0u8; 64];
                let n = stream.read(&mut request).unwrap();
                assert_eq!(&request[..n], b"PING\n");
                thread::sleep(Duration::from_millis(200));
                stream.write_all(b"PONG\n").unwrap();
                thread::sleep(Duration::from_millis(20));
                stream.write_all(b"bye\n").unwrap();
            }
        });
        let api = FakeApi::serve(move |_| {
            let flows: Vec<FlowReport> = peer
                .lock()
                .unwrap()
                .iter()
                .map(|addr| inbound(&addr.to_string(), 150, Some(199_000)))
                .collect();
            Some(json!({"return": {"flows": flows}}).to_string())
        });
        let options = ProbeOptions {
            target: target.to_string(),
            addresses: vec![target],
            count: 2,
            data: b"PING\n".to_vec(),
            timeout: Duration::from_secs(10),
        };
        let report = run(&ApiClient::new(api.path()), &options);
        println!("{}", report_text(&report));
        assert_eq!(report.connections.len(), 2);
        for c in &report.connections {
            assert_eq!(c.error, None, "{c:?}");
            assert!(c.client_connect_us.unwrap() < 2_000_000, "{c:?}");
            assert!(c.client_first_byte_us.unwrap() >= 200_000, "{c:?}");
            assert_eq!(c.bytes_received, 9, "{c:?}");
            let inside = c.tapsplice.as_ref().expect("the flow was found");
            assert_eq!(inside.connect_us, Some(150));
            assert_eq!(inside.path, "stack");
            assert!(c.overhead_us.unwrap() >= 1_000, "{c:?}");
            assert!(c.notes.is_empty(), "{c:?}");
        }
        assert!(
            report
                .verdict
                .starts_with("most of the time is the guest's server answering"),
            "{}",
            report.verdict
        );
        assert_eq!(api.requests().len(), 2);
    }

    #[test]
    fn a_refused_connection_is_reported_not_a_panic() {
        // A port just freed: nobody listens there.
        let target = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let api = FakeApi::start(Vec::new());
        let options = ProbeOptions {
            target: target.to_string(),
            addresses: vec![target],
            count: 2,
            data: Vec::new(),
            timeout: Duration::from_secs(5),
        };
        let report = run(&ApiClient::new(api.path()), &options);
        assert!(!report.connected());
        for c in &report.connections {
            assert_eq!(c.error.as_deref(), Some("connect: Connection refused"));
        }
        assert!(api.requests().is_empty());
    }
}
