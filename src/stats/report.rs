//! What the statistics commands of the API socket answer, as data.
//!
//! One set of types serves three readers: the API socket serialises them as the `return`
//! value of `get_stats`, `list_flows` and `list_forwards`; `tapsplice stats|flows|forwards`
//! deserialises them to print tables; the Prometheus endpoint renders the same values as
//! metrics. Keeping them in one place keeps the three in step.
//!
//! Conventions: durations are whole microseconds (`_us`) or milliseconds (`_ms`), byte counts
//! are payload bytes (TCP stream bytes, UDP payloads) except for the TAP counters, which
//! count whole Ethernet frames. A value that cannot be known for a flow is `null`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `get_stats`: the instance as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// tapsplice's version.
    pub version: String,
    pub uptime_ms: u64,
    pub tap: TapReport,
    /// Frames from the guest that were not used, by reason; every reason is listed.
    pub drops: BTreeMap<String, u64>,
    pub flows: FlowTotals,
    pub forwards: ForwardTotals,
    pub api_requests: u64,
    /// The capture to a pcap file, while one is running (or the last one, once stopped).
    pub pcap: Option<PcapReport>,
    /// Where the Prometheus endpoint listens (`--metrics`), if it does.
    pub metrics_addr: Option<String>,
}

/// Frames and bytes (whole Ethernet frames) that crossed the TAP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapReport {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
}

/// Flows of the NAT (outbound and forwarded through the stack) and of the splice path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTotals {
    /// Open TCP flows by state (`connecting`, `established`, `fin_wait_1`, ...).
    pub tcp: BTreeMap<String, u64>,
    /// Open UDP flows (outbound NAT and forwards).
    pub udp: u64,
    /// Open ICMP echo flows.
    pub icmp: u64,
    /// TCP flows of the NAT (outbound, and forwarded on the stack path) whose both sides
    /// connected, since start; spliced connections count in `ForwardTotals::via_splice`.
    pub tcp_opened: u64,
    /// TCP connections refused: the host connect failed, or the guest refused a forward.
    pub tcp_refused: u64,
    /// TCP flows ended by a reset from either side.
    pub tcp_reset: u64,
    /// TCP flows ended by FIN both ways.
    pub tcp_closed: u64,
    pub udp_opened: u64,
    pub udp_expired: u64,
    /// Stream and datagram payload bytes from the guest to hosts, all flows since start.
    pub bytes_to_host: u64,
    /// Stream and datagram payload bytes from hosts to the guest, all flows since start.
    pub bytes_to_guest: u64,
}

/// Port forwards taken together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardTotals {
    /// Forwards in place now.
    pub count: u64,
    /// TCP clients accepted by forward listeners, since start.
    pub accepted: u64,
    pub via_stack: u64,
    pub via_splice: u64,
    /// Meant for the splice path but sent through the stack (helper failed or full).
    pub splice_fallback: u64,
    /// Accepted clients that were reset at once.
    pub refused: u64,
    /// Spliced connections open now.
    pub splice_open: u64,
    /// UDP forward flows open now.
    pub udp_flows: u64,
    pub udp_datagrams_in: u64,
    pub udp_datagrams_out: u64,
    pub udp_dropped: u64,
}

/// `list_flows`'s value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowList {
    pub flows: Vec<FlowReport>,
}

/// `list_forwards`'s value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ForwardList {
    pub forwards: Vec<ForwardReport>,
}

/// `list_flows`: one flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowReport {
    /// `tcp`, `udp` or `icmp`.
    pub proto: String,
    /// `outbound` (the guest opened it) or `inbound` (a port forward's client).
    pub direction: String,
    /// The forward that made an inbound flow.
    pub forward_id: Option<u64>,
    /// `stack` (through the TAP) or `splice` (a socket in the guest's namespace).
    pub path: String,
    /// The guest's end, as the guest sees it.
    pub guest: String,
    /// The other end, as the guest sees it.
    pub remote: String,
    /// The host socket's own address, when known.
    pub host_local: Option<String>,
    /// The host socket's peer: the server an outbound flow reached, or a forward's client.
    pub host_peer: Option<String>,
    /// `connecting`, then smoltcp's (or the kernel's) TCP state in lower case; UDP and ICMP
    /// flows are `active`.
    pub state: String,
    pub age_ms: u64,
    /// Guest to host.
    pub to_host: DirectionReport,
    /// Host to guest.
    pub to_guest: DirectionReport,
    /// Segments sent to the guest again (by tapsplice's stack, or by the namespace socket
    /// on the splice path).
    pub retrans_guest: Option<u64>,
    /// Segments the host kernel sent again on the host socket (`TCP_INFO`).
    pub retrans_host: Option<u64>,
    /// Smoothed round-trip time to the guest.
    pub rtt_guest_us: Option<u64>,
    /// Smoothed round-trip time of the host socket (`TCP_INFO`).
    pub rtt_host_us: Option<u64>,
    /// From the opening SYN (outbound) or the accept (inbound) until both sides connected.
    pub connect_us: Option<u64>,
    /// From the first byte of the side that opened the flow to the first byte back.
    pub first_byte_us: Option<u64>,
}

/// One direction of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionReport {
    /// Payload bytes moved.
    pub bytes: u64,
    /// Segments (TCP) or datagrams (UDP, ICMP) carried, where known.
    pub segments: Option<u64>,
    /// Bytes taken from the sender and not yet delivered to (or acknowledged by) the receiver.
    pub queued: Option<u64>,
}

/// `list_forwards`: one forward with its connections and latencies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ForwardReport {
    pub id: u64,
    pub proto: String,
    pub host_addr: String,
    pub host_port: u16,
    pub guest_addr: String,
    pub guest_port: u16,
    /// TCP clients accepted, or UDP client flows opened, since the forward was added.
    pub connections: u64,
    /// Of those, open now.
    pub active: u64,
    pub via_stack: u64,
    pub via_splice: u64,
    /// Connections the guest refused (or that could not be made).
    pub refused: u64,
    /// Host accept until the guest's SYN-ACK.
    pub connect: LatencySummary,
    /// First request byte in from the client until the first response byte out to it.
    pub first_byte: LatencySummary,
}

/// Percentiles of a latency histogram, in microseconds; all 0 when `count` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// A capture of the TAP's frames to a pcap file (`start_pcap`, `stop_pcap`, `--pcap`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcapReport {
    pub path: String,
    /// Still capturing.
    pub active: bool,
    /// Bytes kept of each frame.
    pub snaplen: u32,
    /// The file stops growing at this size (0: no limit).
    pub max_bytes: u64,
    /// Frames written.
    pub frames: u64,
    /// Bytes written to the file, headers included.
    pub bytes: u64,
    /// Frames not written because the writer fell behind or the size cap was reached.
    pub dropped: u64,
    /// Why the capture ended, once it has (`stopped`, `size limit reached`, a write error).
    pub ended: Option<String>,
}
