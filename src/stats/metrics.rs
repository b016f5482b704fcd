//! The `--metrics ADDR:PORT` endpoint: the statistics reports as Prometheus metrics, in the
//! text exposition format 0.0.4, answered over a minimal HTTP/1.0.
//!
//! The metrics are rendered from the same [`StatsReport`] and [`ForwardReport`] values that
//! `get_stats` and `list_forwards` return, so the endpoint, the API socket and the CLI cannot
//! disagree. Rendering is a pure function from reports to text and the HTTP side is a pure
//! function from request bytes to response bytes; the event loop owns the sockets and calls
//! them, which keeps both testable without a network.
//!
//! Naming follows Prometheus conventions: everything starts with `tapsplice_`, counters end in
//! `_total`, times are in seconds. Every family has one `# HELP` and one `# TYPE` line and its
//! samples follow it together. Instance-wide forward totals and per-forward series have
//! different names (`tapsplice_forward_refused_total` against
//! `tapsplice_forward_connections_refused_total{id=...}`), so summing a family never counts a
//! connection twice. A forward's latency histograms become summaries with quantiles 0.5, 0.9,
//! 0.99 and 1 (the maximum); an empty histogram has `NaN` quantiles, as Prometheus's own
//! clients write them, rather than a made-up 0.
//!
//! The HTTP side serves one request per connection (`Connection: close`) and reads only the
//! request head: a scraper never sends a body with `GET`, and anything this endpoint does not
//! understand is answered with 400 instead of being guessed at.

use std::fmt::Write as _;

use super::report::{ForwardReport, LatencySummary, StatsReport};

/// Largest request head read before answering 400.
pub const MAX_REQUEST: usize = 8192;

/// The media type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The media type of error bodies.
const CONTENT_TYPE_ERROR: &str = "text/plain; charset=utf-8";

/// Renders all metrics.
pub fn render(stats: &StatsReport, forwards: &[ForwardReport]) -> String {
    let mut out = Exposition::default();
    render_instance(&mut out, stats);
    render_forward_totals(&mut out, stats);
    render_pcap(&mut out, stats);
    render_per_forward(&mut out, forwards);
    out.text
}

/// Whether `request` (bytes read so far from an HTTP client) holds a complete request head
/// ("\r\n\r\n" or "\n\n").
pub fn request_complete(request: &[u8]) -> bool {
    head_len(request).is_some()
}

/// The whole HTTP/1.0 response for a complete request head: `GET /metrics` (also `GET /`)
/// gives 200 with the exposition format's `Content-Type`, `Content-Length` and
/// `Connection: close`, body = `render()`; `HEAD` the same without body; another path 404;
/// another method on the metrics path 405 (with `Allow: GET, HEAD`); garbage 400. `render` is
/// only called for 200.
///
/// A head that is incomplete or longer than [`MAX_REQUEST`] counts as garbage, so a caller
/// whose buffer filled up before the head ended passes what it has and gets its 400.
pub fn respond(request: &[u8], render: impl FnOnce() -> String) -> Vec<u8> {
    let Some(head) = RequestHead::parse(request) else {
        return response(
            "400 Bad Request",
            "",
            CONTENT_TYPE_ERROR,
            "bad request\n",
            true,
        );
    };
    let with_body = head.method != "HEAD";
    if head.path != "/metrics" && head.path != "/" {
        return response(
            "404 Not Found",
            "",
            CONTENT_TYPE_ERROR,
            "not found\n",
            with_body,
        );
    }
    if head.method != "GET" && head.method != "HEAD" {
        return response(
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            CONTENT_TYPE_ERROR,
            "method not allowed\n",
            true,
        );
    }
    response("200 OK", "", CONTENT_TYPE, &render(), with_body)
}

fn render_instance(out: &mut Exposition, stats: &StatsReport) {
    out.family(
        "tapsplice_build_info",
        Kind::Gauge,
        "Always 1; the version label is tapsplice's version.",
    );
    out.sample(
        "tapsplice_build_info",
        &[("version", &stats.version)],
        Value::Int(1),
    );
    out.single(
        "tapsplice_uptime_seconds",
        Kind::Gauge,
        "Time since tapsplice started.",
        Value::Float(stats.uptime_ms as f64 / 1e3),
    );

    let tap = &stats.tap;
    out.by_label(
        "tapsplice_tap_frames_total",
        Kind::Counter,
        "Ethernet frames that crossed the TAP, in from the guest or out to it.",
        "direction",
        &[("in", tap.frames_in), ("out", tap.frames_out)],
    );
    out.by_label(
        "tapsplice_tap_bytes_total",
        Kind::Counter,
        "Bytes of whole Ethernet frames that crossed the TAP, in from the guest or out to it.",
        "direction",
        &[("in", tap.bytes_in), ("out", tap.bytes_out)],
    );
    let drops: Vec<(&str, u64)> = stats.drops.iter().map(|(r, &n)| (r.as_str(), n)).collect();
    out.by_label(
        "tapsplice_drops_total",
        Kind::Counter,
        "Frames from the guest that were not used, by reason.",
        "reason",
        &drops,
    );

    let flows = &stats.flows;
    let tcp: Vec<(&str, u64)> = flows.tcp.iter().map(|(s, &n)| (s.as_str(), n)).collect();
    out.by_label(
        "tapsplice_tcp_flows",
        Kind::Gauge,
        "Open TCP flows, by state.",
        "state",
        &tcp,
    );
    out.single(
        "tapsplice_udp_flows",
        Kind::Gauge,
        "Open UDP flows, outbound and forwarded.",
        Value::Int(flows.udp),
    );
    out.single(
        "tapsplice_icmp_flows",
        Kind::Gauge,
        "Open ICMP echo flows.",
        Value::Int(flows.icmp),
    );
    out.single(
        "tapsplice_tcp_flows_opened_total",
        Kind::Counter,
        "TCP flows whose both sides connected.",
        Value::Int(flows.tcp_opened),
    );
    out.single(
        "tapsplice_tcp_flows_refused_total",
        Kind::Counter,
        "TCP connections refused by the host or, for forwards, by the guest.",
        Value::Int(flows.tcp_refused),
    );
    out.single(
        "tapsplice_tcp_flows_reset_total",
        Kind::Counter,
        "TCP flows ended by a reset from either side.",
        Value::Int(flows.tcp_reset),
    );
    out.single(
        "tapsplice_tcp_flows_closed_total",
        Kind::Counter,
        "TCP flows ended by FIN both ways.",
        Value::Int(flows.tcp_closed),
    );
    out.single(
        "tapsplice_udp_flows_opened_total",
        Kind::Counter,
        "UDP flows opened.",
        Value::Int(flows.udp_opened),
    );
    out.single(
        "tapsplice_udp_flows_expired_total",
        Kind::Counter,
        "UDP flows ended by their idle timeout.",
        Value::Int(flows.udp_expired),
    );
    out.by_label(
        "tapsplice_flow_bytes_total",
        Kind::Counter,
        "Stream and datagram payload bytes of all flows, from the guest to hosts or back.",
        "direction",
        &[
            ("to_host", flows.bytes_to_host),
            ("to_guest", flows.bytes_to_guest),
        ],
    );
    out.single(
        "tapsplice_api_requests_total",
        Kind::Counter,
        "Requests served on the API socket.",
        Value::Int(stats.api_requests),
    );
}

fn render_forward_totals(out: &mut Exposition, stats: &StatsReport) {
    let totals = &stats.forwards;
    out.single(
        "tapsplice_forwards",
        Kind::Gauge,
        "Port forwards in place.",
        Value::Int(totals.count),
    );
    out.by_label(
        "tapsplice_forward_accepted_total",
        Kind::Counter,
        "TCP clients accepted by forward listeners, by the path their connection took.",
        "path",
        &[("stack", totals.via_stack), ("splice", totals.via_splice)],
    );
    out.single(
        "tapsplice_forward_splice_fallback_total",
        Kind::Counter,
        "Forward connections meant for the splice path but sent through the stack.",
        Value::Int(totals.splice_fallback),
    );
    out.single(
        "tapsplice_forward_refused_total",
        Kind::Counter,
        "Accepted forward clients that were reset at once, all forwards.",
        Value::Int(totals.refused),
    );
    out.single(
        "tapsplice_splice_connections",
        Kind::Gauge,
        "Spliced forward connections open.",
        Value::Int(totals.splice_open),
    );
    out.single(
        "tapsplice_forward_udp_flows",
        Kind::Gauge,
        "UDP forward flows open.",
        Value::Int(totals.udp_flows),
    );
    out.by_label(
        "tapsplice_forward_udp_datagrams_total",
        Kind::Counter,
        "Datagrams of UDP forwards, in from clients or out to them.",
        "direction",
        &[
            ("in", totals.udp_datagrams_in),
            ("out", totals.udp_datagrams_out),
        ],
    );
    out.single(
        "tapsplice_forward_udp_dropped_total",
        Kind::Counter,
        "Datagrams of UDP forwards that were dropped.",
        Value::Int(totals.udp_dropped),
    );
}

/// The pcap capture, while there is one (or the last one); its counters restart with each
/// capture.
fn render_pcap(out: &mut Exposition, stats: &StatsReport) {
    let Some(pcap) = &stats.pcap else {
        return;
    };
    out.single(
        "tapsplice_pcap_active",
        Kind::Gauge,
        "1 while a pcap capture is running, 0 once it has ended.",
        Value::Int(u64::from(pcap.active)),
    );
    out.single(
        "tapsplice_pcap_frames_total",
        Kind::Counter,
        "Frames written by the current or last pcap capture.",
        Value::Int(pcap.frames),
    );
    out.single(
        "tapsplice_pcap_bytes_total",
        Kind::Counter,
        "Bytes written to the pcap file by the current or last capture, headers included.",
        Value::Int(pcap.bytes),
    );
    out.single(
        "tapsplice_pcap_dropped_total",
        Kind::Counter,
        "Frames the current or last pcap capture did not write.",
        Value::Int(pcap.dropped),
    );
}

fn render_per_forward(out: &mut Exposition, forwards: &[ForwardReport]) {
    let labelled: Vec<(ForwardLabels, &ForwardReport)> =
        forwards.iter().map(|f| (ForwardLabels::of(f), f)).collect();

    out.per_forward(
        "tapsplice_forward_connections_total",
        Kind::Counter,
        "TCP clients accepted, or UDP client flows opened, by one forward.",
        &labelled,
        |f| f.connections,
    );
    out.per_forward(
        "tapsplice_forward_active_connections",
        Kind::Gauge,
        "Connections of one forward open now.",
        &labelled,
        |f| f.active,
    );
    out.per_forward(
        "tapsplice_forward_connections_refused_total",
        Kind::Counter,
        "Connections of one forward that the guest refused or that could not be made.",
        &labelled,
        |f| f.refused,
    );

    let name = "tapsplice_forward_path_connections_total";
    out.family(
        name,
        Kind::Counter,
        "Connections of one forward, by the path they took.",
    );
    for (labels, forward) in &labelled {
        let [id, proto, host, guest] = labels.pairs();
        for (path, n) in [("stack", forward.via_stack), ("splice", forward.via_splice)] {
            out.sample(
                name,
                &[id, proto, host, guest, ("path", path)],
                Value::Int(n),
            );
        }
    }

    out.latency(
        "tapsplice_forward_connect_seconds",
        "From the host accept until the guest's SYN-ACK, per forward.",
        &labelled,
        |f| &f.connect,
    );
    out.latency(
        "tapsplice_forward_first_byte_seconds",
        "From the first request byte in from a client until the first response byte out to it, per forward.",
        &labelled,
        |f| &f.first_byte,
    );
}

/// The label values that tell one forward's series apart.
struct ForwardLabels {
    id: String,
    proto: String,
    host: String,
    guest: String,
}

impl ForwardLabels {
    fn of(forward: &ForwardReport) -> Self {
        ForwardLabels {
            id: forward.id.to_string(),
            proto: forward.proto.clone(),
            host: endpoint(&forward.host_addr, forward.host_port),
            guest: endpoint(&forward.guest_addr, forward.guest_port),
        }
    }

    fn pairs(&self) -> [(&str, &str); 4] {
        [
            ("id", &self.id),
            ("proto", &self.proto),
            ("host", &self.host),
            ("guest", &self.guest),
        ]
    }
}

/// `ADDR:PORT`, with an IPv6 address in brackets.
fn endpoint(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// The `# TYPE` of a metric family.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

/// A sample's value: counts exactly as integers, times as floats.
enum Value {
    Int(u64),
    Float(f64),
}

/// The exposition text being written, one family after the other.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines. `help` is a constant without
    /// backslashes or line breaks, so it needs no escaping.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
    }

    /// One sample line: `name{label="value",...} value`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                escape_label_value(&mut self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        match value {
            Value::Int(n) => {
                let _ = write!(self.text, "{n}");
            }
            Value::Float(x) => write_float(&mut self.text, x),
        }
        self.text.push('\n');
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: Value) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family of one sample per value of one label.
    fn by_label(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: &str,
        values: &[(&str, u64)],
    ) {
        self.family(name, kind, help);
        for &(label_value, n) in values {
            self.sample(name, &[(label, label_value)], Value::Int(n));
        }
    }

    /// A family of one sample per forward.
    fn per_forward(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        forwards: &[(ForwardLabels, &ForwardReport)],
        value: fn(&ForwardReport) -> u64,
    ) {
        self.family(name, kind, help);
        for (labels, forward) in forwards {
            self.sample(name, &labels.pairs(), Value::Int(value(forward)));
        }
    }

    /// A latency histogram of each forward as a summary in seconds: quantiles 0.5, 0.9, 0.99
    /// and 1 (the maximum), `_sum` and `_count`.
    fn latency(
        &mut self,
        name: &str,
        help: &str,
        forwards: &[(ForwardLabels, &ForwardReport)],
        histogram: fn(&ForwardReport) -> &LatencySummary,
    ) {
        self.family(name, Kind::Summary, help);
        let sum_name = format!("{name}_sum");
        let count_name = format!("{name}_count");
        for (labels, forward) in forwards {
            let summary = histogram(forward);
            let [id, proto, host, guest] = labels.pairs();
            let quantiles = [
                ("0.5", summary.p50_us),
                ("0.9", summary.p90_us),
                ("0.99", summary.p99_us),
                ("1", summary.max_us),
            ];
            for (quantile, micros) in quantiles {
                let seconds = if summary.count == 0 {
                    f64::NAN
                } else {
                    micros as f64 / 1e6
                };
                self.sample(
                    name,
                    &[id, proto, host, guest, ("quantile", quantile)],
                    Value::Float(seconds),
                );
            }
            let sum = summary.mean_us * summary.count as f64 / 1e6;
            self.sample(&sum_name, &labels.pairs(), Value::Float(sum));
            self.sample(&count_name, &labels.pairs(), Value::Int(summary.count));
        }
    }
}

/// A label value inside its double quotes: backslash, double quote and line feed escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
}

/// A float as Prometheus reads it: Rust's shortest round-trip decimal for finite values,
/// `NaN`, `+Inf` and `-Inf` otherwise.
fn write_float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{x}");
    }
}

/// Length of the request head up to the end of its last line, if the blank line that ends
/// it has arrived. Lines may end in "\r\n" or "\n".
fn head_len(request: &[u8]) -> Option<usize> {
    request.iter().enumerate().find_map(|(i, &b)| {
        let rest = &request[i + 1..];
        (b == b'\n' && (rest.starts_with(b"\n") || rest.starts_with(b"\r\n"))).then_some(i)
    })
}

/// What of a request head decides the answer.
struct RequestHead<'a> {
    method: &'a str,
    /// The target without its query.
    path: &'a str,
}

impl<'a> RequestHead<'a> {
    /// The method and path of a well-formed, complete head of at most [`MAX_REQUEST`] bytes:
    /// a request line `METHOD TARGET HTTP/1.x` and header lines `Name: value`.
    fn parse(request: &'a [u8]) -> Option<Self> {
        let len = head_len(request).filter(|&len| len <= MAX_REQUEST)?;
        let head = std::str::from_utf8(&request[..len]).ok()?;
        let mut lines = head.lines();
        let mut request_line = lines.next()?.split(' ');
        let (method, target, version) = (
            request_line.next()?,
            request_line.next()?,
            request_line.next()?,
        );
        if request_line.next().is_some()
            || !is_token(method)
            || target.is_empty()
            || !version.starts_with("HTTP/1.")
        {
            return None;
        }
        let headers_valid =
            lines.all(|line| line.split_once(':').is_some_and(|(name, _)| is_token(name)));
        if !headers_valid {
            return None;
        }
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        Some(RequestHead { method, path })
    }
}

/// Whether `text` is an HTTP token (a method or a header name).
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A whole response; without its body for `HEAD`, though `Content-Length` still gives the
/// body's length.
fn response(
    status: &str,
    extra_headers: &str,
    content_type: &str,
    body: &str,
    with_body: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::*;
    use crate::stats::report::{FlowTotals, ForwardTotals, PcapReport, TapReport};

    fn sample_stats() -> StatsReport {
        StatsReport {
            version: "0.1.0".into(),
            uptime_ms: 12_345,
            tap: TapReport {
                frames_in: 17,
                bytes_in: 1_700,
                frames_out: 18,
                bytes_out: 1_800,
            },
            drops: BTreeMap::from([
                ("malformed".to_string(), 3),
                ("bad_checksum".to_string(), 4),
                ("no_flow".to_string(), 5),
            ]),
            flows: FlowTotals {
                tcp: BTreeMap::from([
                    ("established".to_string(), 6),
                    ("fin_wait_1".to_string(), 7),
                ]),
                udp: 8,
                icmp: 9,
                tcp_opened: 10,
                tcp_refused: 11,
                tcp_reset: 12,
                tcp_closed: 13,
                udp_opened: 14,
                udp_expired: 15,
                bytes_to_host: 16_000,
                bytes_to_guest: 17_000,
            },
            forwards: ForwardTotals {
                count: 2,
                accepted: 41,
                via_stack: 19,
                via_splice: 22,
                splice_fallback: 23,
                refused: 24,
                splice_open: 25,
                udp_flows: 26,
                udp_datagrams_in: 27,
                udp_datagrams_out: 28,
                udp_dropped: 29,
            },
            api_requests: 30,
            pcap: Some(PcapReport {
                path: "/tmp/x.pcap".into(),
                active: true,
                snaplen: 65_535,
                max_bytes: 0,
                frames: 31,
                bytes: 32_000,
                dropped: 33,
                ended: None,
            }),
            metrics_addr: Some("127.0.0.1:9100".into()),
        }
    }

    fn sample_forwards() -> Vec<ForwardReport> {
        vec![
            ForwardReport {
                id: 1,
                proto: "tcp".into(),
                host_addr: "127.0.0.1".into(),
                host_port: 8080,
                guest_addr: "10.0.2.100".into(),
                guest_port: 80,
                connections: 40,
                active: 2,
                via_stack: 30,
                via_splice: 10,
                refused: 3,
                connect: LatencySummary {
                    count: 4,
                    p50_us: 500,
                    p90_us: 900,
                    p99_us: 1_250,
                    max_us: 2_000_000,
                    mean_us: 750.5,
                },
                first_byte: LatencySummary {
                    count: 2,
                    p50_us: 1,
                    p90_us: 1_000,
                    p99_us: 1_000,
                    max_us: 1_000,
                    mean_us: 500.5,
                },
            },
            ForwardReport {
                id: 2,
                proto: "udp".into(),
                host_addr: "::1".into(),
                host_port: 5353,
                guest_addr: "10.0.2.100".into(),
                guest_port: 53,
                connections: 5,
                active: 1,
                via_stack: 5,
                ..ForwardReport::default()
            },
        ]
    }

    fn rendered() -> String {
        render(&sample_stats(), &sample_forwards())
    }

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    /// One sample line taken apart the way a scraper reads it.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn is_metric_name(name: &str) -> bool {
        let mut bytes = name.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    }

    /// Parses `name{label="value",...} value` strictly: escapes `\\`, `\"` and `\n` only.
    fn parse_sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).expect("name ends");
        let name = &line[..name_end];
        assert!(is_metric_name(name), "metric name in {line:?}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = after;
            loop {
                let (label, after) = rest.split_once("=\"").expect("label=\"");
                assert!(is_metric_name(label), "label name in {line:?}");
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect("closing quote") {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next().expect("escaped char").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => panic!("bad escape \\{c} in {line:?}"),
                        },
                        (_, '\n') => panic!("raw newline in {line:?}"),
                        (_, c) => value.push(c),
                    }
                };
                labels.push((label.to_string(), value));
                rest = &after[end + 1..];
                if let Some(after) = rest.strip_prefix(',') {
                    rest = after;
                } else {
                    rest = rest.strip_prefix('}').expect("closing brace");
                    break;
                }
            }
        }
        let value = rest.strip_prefix(' ').expect("space before value");
        let value = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            _ => value
                .parse()
                .unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        Sample {
            name: name.to_string(),
            labels,
            value,
        }
    }

    /// Checks the structure of an exposition and returns its samples.
    fn check_exposition(text: &str) -> Vec<Sample> {
        assert!(text.ends_with('\n'));
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped: HashSet<String> = HashSet::new();
        let mut family: Option<(String, String)> = None;
        let mut series = HashSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(help) = line.strip_prefix("# HELP ") {
                let (name, _) = help.split_once(' ').expect("help text");
                assert!(helped.insert(name.to_string()), "second HELP of {name}");
                continue;
            }
            if let Some(decl) = line.strip_prefix("# TYPE ") {
                let (name, kind) = decl.split_once(' ').expect("type");
                assert!(is_metric_name(name), "{name}");
                assert!(name.starts_with("tapsplice_"), "{name}");
                assert!(helped.contains(name), "TYPE of {name} without HELP before");
                assert!(
                    ["counter", "gauge", "summary"].contains(&kind),
                    "{name}: {kind}"
                );
                assert_eq!(
                    kind == "counter",
                    name.ends_with("_total"),
                    "{name}: counters and only counters end in _total"
                );
                let previous = types.insert(name.to_string(), kind.to_string());
                assert!(previous.is_none(), "second TYPE of {name}");
                family = Some((name.to_string(), kind.to_string()));
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment {line:?}");
            let sample = parse_sample(line);
            let (family_name, kind) = family.as_ref().expect("sample before any TYPE");
            let belongs = sample.name == *family_name
                || (kind == "summary"
                    && [format!("{family_name}_sum"), format!("{family_name}_count")]
                        .contains(&sample.name));
            assert!(belongs, "{line:?} outside its family {family_name}");
            let mut key = sample.labels.clone();
            key.sort();
            assert!(
                series.insert((sample.name.clone(), key)),
                "duplicate series {line:?}"
            );
            samples.push(sample);
        }
        for (name, kind) in &types {
            if kind == "summary" {
                for suffix in ["_sum", "_count"] {
                    let derived = format!("{name}{suffix}");
                    assert!(!types.contains_key(&derived), "{derived} clashes");
                }
            }
        }
        samples
    }

    #[test]
    fn exact_lines_of_instance_metrics() {
        let text = rendered();
        for line in [
            "tapsplice_build_info{version=\"0.1.0\"} 1",
            "tapsplice_uptime_seconds 12.345",
            "# TYPE tapsplice_uptime_seconds gauge",
            "tapsplice_tap_frames_total{direction=\"in\"} 17",
            "tapsplice_tap_frames_total{direction=\"out\"} 18",
            "# TYPE tapsplice_tap_frames_total counter",
            "tapsplice_tap_bytes_total{direction=\"in\"} 1700",
            "tapsplice_tap_bytes_total{direction=\"out\"} 1800",
            "tapsplice_drops_total{reason=\"malformed\"} 3",
            "tapsplice_drops_total{reason=\"bad_checksum\"} 4",
            "tapsplice_drops_total{reason=\"no_flow\"} 5",
            "tapsplice_tcp_flows{state=\"established\"} 6",
            "tapsplice_tcp_flows{state=\"fin_wait_1\"} 7",
            "# TYPE tapsplice_tcp_flows gauge",
            "tapsplice_udp_flows 8",
            "tapsplice_icmp_flows 9",
            "tapsplice_tcp_flows_opened_total 10",
            "tapsplice_tcp_flows_refused_total 11",
            "tapsplice_tcp_flows_reset_total 12",
            "tapsplice_tcp_flows_closed_total 13",
            "tapsplice_udp_flows_opened_total 14",
            "tapsplice_udp_flows_expired_total 15",
            "tapsplice_flow_bytes_total{direction=\"to_host\"} 16000",
            "tapsplice_flow_bytes_total{direction=\"to_guest\"} 17000",
            "tapsplice_api_requests_total 30",
        ] {
            assert!(has_line(&text, line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn exact_lines_of_forward_totals_and_pcap() {
        let text = rendered();
        for line in [
            "tapsplice_forwards 2",
            "tapsplice_forward_accepted_total{path=\"stack\"} 19",
            "tapsplice_forward_accepted_total{path=\"splice\"} 22",
            "tapsplice_forward_splice_fallback_total 23",
            "tapsplice_forward_refused_total 24",
            "tapsplice_splice_connections 25",
            "tapsplice_forward_udp_flows 26",
            "tapsplice_forward_udp_datagrams_total{direction=\"in\"} 27",
            "tapsplice_forward_udp_datagrams_total{direction=\"out\"} 28",
            "tapsplice_forward_udp_dropped_total 29",
            "tapsplice_pcap_active 1",
            "# TYPE tapsplice_pcap_active gauge",
            "tapsplice_pcap_frames_total 31",
            "tapsplice_pcap_bytes_total 32000",
            "tapsplice_pcap_dropped_total 33",
        ] {
            assert!(has_line(&text, line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn exact_lines_of_each_forward() {
        let text = rendered();
        let one = "id=\"1\",proto=\"tcp\",host=\"127.0.0.1:8080\",guest=\"10.0.2.100:80\"";
        let two = "id=\"2\",proto=\"udp\",host=\"[::1]:5353\",guest=\"10.0.2.100:53\"";
        for line in [
            format!("tapsplice_forward_connections_total{{{one}}} 40"),
            format!("tapsplice_forward_connections_total{{{two}}} 5"),
            format!("tapsplice_forward_active_connections{{{one}}} 2"),
            format!("tapsplice_forward_connections_refused_total{{{one}}} 3"),
            format!("tapsplice_forward_connections_refused_total{{{two}}} 0"),
            format!("tapsplice_forward_path_connections_total{{{one},path=\"stack\"}} 30"),
            format!("tapsplice_forward_path_connections_total{{{one},path=\"splice\"}} 10"),
            format!("tapsplice_forward_connect_seconds{{{one},quantile=\"0.5\"}} 0.0005"),
            format!("tapsplice_forward_connect_seconds{{{one},quantile=\"0.9\"}} 0.0009"),
            format!("tapsplice_forward_connect_seconds{{{one},quantile=\"0.99\"}} 0.00125"),
            format!("tapsplice_forward_connect_seconds{{{one},quantile=\"1\"}} 2"),
            format!("tapsplice_forward_connect_seconds_sum{{{one}}} 0.003002"),
            format!("tapsplice_forward_connect_seconds_count{{{one}}} 4"),
            format!("tapsplice_forward_first_byte_seconds{{{one},quantile=\"0.5\"}} 0.000001"),
            format!("tapsplice_forward_first_byte_seconds_sum{{{one}}} 0.001001"),
            format!("tapsplice_forward_first_byte_seconds_count{{{one}}} 2"),
            // An empty histogram: unknown quantiles, zero sum and count.
            format!("tapsplice_forward_connect_seconds{{{two},quantile=\"0.99\"}} NaN"),
            format!("tapsplice_forward_connect_seconds_sum{{{two}}} 0"),
            format!("tapsplice_forward_connect_seconds_count{{{two}}} 0"),
            "# TYPE tapsplice_forward_connect_seconds summary".to_string(),
            "# TYPE tapsplice_forward_active_connections gauge".to_string(),
        ] {
            assert!(has_line(&text, &line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn every_line_is_well_formed_and_every_series_unique() {
        let samples = check_exposition(&rendered());
        // Four quantiles, a sum and a count per forward and histogram.
        let connect = samples
            .iter()
            .filter(|s| s.name.starts_with("tapsplice_forward_connect_seconds"))
            .count();
        assert_eq!(connect, 2 * 6);
        let uptime = samples
            .iter()
            .find(|s| s.name == "tapsplice_uptime_seconds")
            .unwrap();
        assert_eq!(uptime.value, 12.345);
    }

    #[test]
    fn empty_reports_are_well_formed_and_leave_out_pcap_and_forwards() {
        let text = render(&StatsReport::default(), &[]);
        check_exposition(&text);
        assert!(!text.contains("tapsplice_pcap"));
        assert!(!text.contains("id=\""));
        assert!(has_line(&text, "tapsplice_forwards 0"));
        // A family without samples still declares its type once.
        assert!(has_line(&text, "# TYPE tapsplice_drops_total counter"));
    }

    #[test]
    fn stopped_pcap_is_inactive() {
        let mut stats = sample_stats();
        stats.pcap.as_mut().unwrap().active = false;
        let text = render(&stats, &[]);
        assert!(has_line(&text, "tapsplice_pcap_active 0"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut stats = sample_stats();
        stats.drops.insert("a\\b\"c\nd".into(), 1);
        let mut forwards = sample_forwards();
        forwards[0].proto = "t\"c\\p\n".into();
        let text = render(&stats, &forwards);
        assert!(has_line(
            &text,
            "tapsplice_drops_total{reason=\"a\\\\b\\\"c\\nd\"} 1"
        ));
        assert!(text.contains("proto=\"t\\\"c\\\\p\\n\""));
        let samples = check_exposition(&text);
        assert!(samples.iter().any(|s| {
            s.labels
                .contains(&("reason".to_string(), "a\\b\"c\nd".to_string()))
        }));
        assert!(samples.iter().any(|s| {
            s.labels
                .contains(&("proto".to_string(), "t\"c\\p\n".to_string()))
        }));
    }

    #[test]
    fn floats_read_back_exactly() {
        for x in [0.0, 1e-6, 0.0005, 12.345, 3600.0, 1e300, f64::MIN_POSITIVE] {
            let mut text = String::new();
            write_float(&mut text, x);
            assert_eq!(text.parse::<f64>().unwrap(), x, "{text}");
        }
        let mut text = String::new();
        write_float(&mut text, f64::NAN);
        write_float(&mut text, f64::INFINITY);
        write_float(&mut text, f64::NEG_INFINITY);
        assert_eq!(text, "NaN+Inf-Inf");
    }

    /// Splits a response into its head lines and body.
    fn split_response(response: &[u8]) -> (Vec<String>, Vec<u8>) {
        let end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head ends");
        let head = std::str::from_utf8(&response[..end]).unwrap();
        let lines = head.split("\r\n").map(str::to_string).collect();
        (lines, response[end + 4..].to_vec())
    }

    fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
        lines[1..].iter().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }

    #[test]
    fn get_metrics_answers_200_with_the_rendering() {
        let body = rendered();
        for request in [
            &b"GET /metrics HTTP/1.1\r\nHost: localhost:9100\r\nAccept: */*\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET /metrics?name[]=x HTTP/1.1\nHost: x\n\n",
        ] {
            let response = respond(request, || body.clone());
            let (lines, got) = split_response(&response);
            assert_eq!(lines[0], "HTTP/1.0 200 OK");
            assert_eq!(
                header(&lines, "Content-Type"),
                Some("text/plain; version=0.0.4; charset=utf-8")
            );
            assert_eq!(
                header(&lines, "Content-Length"),
                Some(body.len().to_string().as_str())
            );
            assert_eq!(header(&lines, "Connection"), Some("close"));
            assert_eq!(got, body.as_bytes());
        }
    }

    #[test]
    fn head_answers_like_get_without_body() {
        let body = rendered();
        let response = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", || body.clone());
        let (lines, got) = split_response(&response);
        assert_eq!(lines[0], "HTTP/1.0 200 OK");
        assert_eq!(
            header(&lines, "Content-Length"),
            Some(body.len().to_string().as_str())
        );
        assert!(got.is_empty());
    }

    /// The status line and body of a response for which rendering must not happen.
    fn refused(request: &[u8]) -> (Vec<String>, Vec<u8>) {
        let response = respond(request, || panic!("rendered for an error"));
        let (lines, body) = split_response(&response);
        if !request.starts_with(b"HEAD ") {
            assert_eq!(
                header(&lines, "Content-Length"),
                Some(body.len().to_string().as_str())
            );
        }
        assert_eq!(header(&lines, "Connection"), Some("close"));
        (lines, body)
    }

    #[test]
    fn other_paths_are_not_found() {
        for request in [
            &b"GET /metricsx HTTP/1.1\r\n\r\n"[..],
            b"GET /favicon.ico HTTP/1.0\r\n\r\n",
            b"POST /other HTTP/1.0\r\n\r\n",
        ] {
            let (lines, body) = refused(request);
            assert_eq!(lines[0], "HTTP/1.0 404 Not Found");
            assert_eq!(body, b"not found\n");
        }
        let (lines, body) = refused(b"HEAD /nothing HTTP/1.1\r\n\r\n");
        assert_eq!(lines[0], "HTTP/1.0 404 Not Found");
        assert_eq!(header(&lines, "Content-Length"), Some("10"));
        assert!(body.is_empty());
    }

    #[test]
    fn other_methods_are_not_allowed() {
        for request in [
            &b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"[..],
            b"DELETE / HTTP/1.0\r\n\r\n",
            b"get /metrics HTTP/1.0\r\n\r\n",
        ] {
            let (lines, body) = refused(request);
            assert_eq!(lines[0], "HTTP/1.0 405 Method Not Allowed");
            assert_eq!(header(&lines, "Allow"), Some("GET, HEAD"));
            assert_eq!(body, b"method not allowed\n");
        }
    }

    #[test]
    fn garbage_is_a_bad_request() {
        let mut long = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        long.resize(MAX_REQUEST + 10, b'a');
        long.extend_from_slice(b"\r\n\r\n");
        for request in [
            &b"\r\n\r\n"[..],
            b"hello\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SMTP/1.0\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n folded: header\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET /metr\xffics HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
            &long,
        ] {
            let (lines, body) = refused(request);
            assert_eq!(lines[0], "HTTP/1.0 400 Bad Request", "{request:?}");
            assert_eq!(body, b"bad request\n");
        }
    }

    #[test]
    fn request_head_completes_at_the_blank_line() {
        assert!(!request_complete(b""));
        assert!(!request_complete(b"GET /metrics HTTP/1.1\r\n"));
        assert!(!request_complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r"));
        assert!(!request_complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"));
        assert!(request_complete(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        ));
        assert!(request_complete(b"GET /metrics HTTP/1.0\n\n"));
        assert!(request_complete(b"GET / HTTP/1.0\r\n\r\nleftover"));
    }
}
