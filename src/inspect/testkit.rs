//! Test fixtures of the inspection commands: a fake API socket server and canned reports.
//!
//! The fake server speaks the real protocol (read one request to EOF, write one reply, close)
//! on a UNIX socket in the temporary directory, so the client is tested through real sockets
//! without a running tapsplice. The canned reports cover the cases the tables must handle:
//! both directions and paths, IPv6, `null` figures, a forward with no connections.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::Value;

use crate::stats::report::{
    DirectionReport, FlowReport, FlowTotals, ForwardReport, ForwardTotals, LatencySummary,
    PcapReport, StatsReport, TapReport,
};

/// A fresh socket path in the temporary directory, not yet bound.
pub fn socket_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("tapsplice-inspect-{}-{n}.sock", std::process::id()))
}

/// An API socket that answers each request with what `answer` makes of it, recording the
/// requests. It serves until the test ends; dropping it removes the socket file.
pub struct FakeApi {
    path: PathBuf,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl FakeApi {
    /// Answers the requests with `replies`, in order, then stops accepting.
    pub fn start(replies: Vec<String>) -> FakeApi {
        let mut replies = replies.into_iter();
        FakeApi::serve(move |_| replies.next())
    }

    /// Answers each request with `answer(request)`, until it returns `None`.
    pub fn serve(mut answer: impl FnMut(&Value) -> Option<String> + Send + 'static) -> FakeApi {
        let path = socket_path();
        let listener = UnixListener::bind(&path).expect("bind the fake API socket");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut raw = String::new();
                if stream.read_to_string(&mut raw).is_err() {
                    continue;
                }
                let request = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
                let reply = answer(&request);
                seen.lock().unwrap().push(request);
                let Some(reply) = reply else { break };
                // The client may have given up; that is its test's business.
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        FakeApi { path, requests }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn sample_pcap() -> PcapReport {
    PcapReport {
        path: "/tmp/guest.pcap".into(),
        active: true,
        snaplen: 65535,
        max_bytes: 100 << 20,
        frames: 1234,
        bytes: 466_944,
        dropped: 2,
        ended: None,
    }
}

pub fn sample_stats() -> StatsReport {
    let mut drops: BTreeMap<String, u64> = [
        "malformed",
        "bad_checksum",
        "unsupported",
        "not_ours",
        "flow_limit",
        "disabled",
        "no_flow",
        "buffer_full",
    ]
    .into_iter()
    .map(|reason| (reason.to_string(), 0))
    .collect();
    drops.insert("no_flow".into(), 3);
    drops.insert("unsupported".into(), 17);
    StatsReport {
        version: "0.1.0".into(),
        uptime_ms: 7_512_000,
        tap: TapReport {
            frames_in: 120_345,
            bytes_in: 24_222_105,
            frames_out: 98_765,
            bytes_out: 3_565_158,
        },
        drops,
        flows: FlowTotals {
            tcp: [("established".to_string(), 4), ("time_wait".to_string(), 2)]
                .into_iter()
                .collect(),
            udp: 3,
            icmp: 0,
            tcp_opened: 120,
            tcp_refused: 2,
            tcp_reset: 5,
            tcp_closed: 109,
            udp_opened: 40,
            udp_expired: 37,
            bytes_to_host: 1_572_864,
            bytes_to_guest: 24_222_105,
        },
        forwards: ForwardTotals {
            count: 2,
            accepted: 50,
            via_stack: 30,
            via_splice: 20,
            splice_fallback: 0,
            refused: 1,
            splice_open: 2,
            udp_flows: 1,
            udp_datagrams_in: 100,
            udp_datagrams_out: 98,
            udp_dropped: 0,
        },
        api_requests: 42,
        pcap: Some(sample_pcap()),
        metrics_addr: Some("127.0.0.1:9464".into()),
    }
}

pub fn sample_flows() -> Vec<FlowReport> {
    vec![
        FlowReport {
            proto: "tcp".into(),
            direction: "outbound".into(),
            forward_id: None,
            path: "stack".into(),
            guest: "10.0.2.100:43210".into(),
            remote: "93.184.216.34:443".into(),
            host_local: Some("192.168.1.20:51234".into()),
            host_peer: Some("93.184.216.34:443".into()),
            state: "established".into(),
            age_ms: 250_000,
            to_host: DirectionReport {
                bytes: 1536,
                segments: Some(12),
                queued: Some(0),
            },
            to_guest: DirectionReport {
                bytes: 24_222_105,
                segments: Some(17_000),
                queued: Some(65_536),
            },
            retrans_guest: Some(0),
            retrans_host: Some(3),
            rtt_guest_us: Some(45),
            rtt_host_us: Some(12_345),
            connect_us: Some(25_100),
            first_byte_us: Some(80_250),
        },
        FlowReport {
            proto: "tcp".into(),
            direction: "inbound".into(),
            forward_id: Some(1),
            path: "splice".into(),
            guest: "10.0.2.100:80".into(),
            remote: "10.0.2.2:39876".into(),
            host_local: Some("127.0.0.1:8080".into()),
            host_peer: Some("127.0.0.1:39876".into()),
            state: "established".into(),
            age_ms: 850,
            to_host: DirectionReport {
                bytes: 18,
                segments: None,
                queued: None,
            },
            to_guest: DirectionReport {
                bytes: 0,
                segments: None,
                queued: None,
            },
            retrans_guest: None,
            retrans_host: None,
            rtt_guest_us: None,
            rtt_host_us: Some(30),
            connect_us: Some(120),
            first_byte_us: None,
        },
        FlowReport {
            proto: "udp".into(),
            direction: "outbound".into(),
            forward_id: None,
            path: "stack".into(),
            guest: "[fd00::100]:5353".into(),
            remote: "[2001:db8::53]:53".into(),
            host_local: None,
            host_peer: Some("[2001:db8::53]:53".into()),
            state: "active".into(),
            age_ms: 12_345,
            to_host: DirectionReport {
                bytes: 64,
                segments: Some(1),
                queued: None,
            },
            to_guest: DirectionReport {
                bytes: 512,
                segments: Some(1),
                queued: None,
            },
            ..FlowReport::default()
        },
    ]
}

pub fn sample_forwards() -> Vec<ForwardReport> {
    vec![
        ForwardReport {
            id: 1,
            proto: "tcp".into(),
            host_addr: "127.0.0.1".into(),
            host_port: 8080,
            guest_addr: "10.0.2.100".into(),
            guest_port: 80,
            connections: 48,
            active: 2,
            via_stack: 28,
            via_splice: 20,
            refused: 1,
            connect: LatencySummary {
                count: 47,
                p50_us: 95,
                p90_us: 210,
                p99_us: 1_234,
                max_us: 4_050,
                mean_us: 180.5,
            },
            first_byte: LatencySummary {
                count: 45,
                p50_us: 502_400,
                p90_us: 510_000,
                p99_us: 530_000,
                max_us: 1_601_000,
                mean_us: 507_000.0,
            },
        },
        ForwardReport {
            id: 2,
            proto: "udp".into(),
            host_addr: "::".into(),
            host_port: 5353,
            guest_addr: "10.0.2.100".into(),
            guest_port: 53,
            connections: 2,
            active: 1,
            via_stack: 2,
            ..ForwardReport::default()
        },
    ]
}
