//! Statistics: counters of what crossed the TAP and why frames were dropped, latency
//! histograms of port forwards, the pcap writer, and the reports the API socket, the CLI and
//! the metrics endpoint show.
//!
//! The data path never builds an error value for a bad frame: it counts a [`DropReason`]
//! and moves on. Counting is a few integer increments, cheap enough to be always on; the
//! reports are built only when someone asks.

pub mod latency;
pub mod metrics;
pub mod pcap;
pub mod report;

/// Why a frame from the guest was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Too short or inconsistent headers.
    Malformed,
    /// An IP or TCP checksum did not match.
    BadChecksum,
    /// A protocol or message type tapsplice does not carry.
    Unsupported,
    /// ARP for an address that is not ours (the guest probing for a free address).
    NotOurs,
    /// A new flow while the flow table was full.
    FlowLimit,
    /// Switched off by an option (`--disable-dns`).
    Disabled,
    /// A TCP segment (not a SYN) of no known flow; the guest got an RST.
    NoFlow,
    /// A datagram that a full socket or queue could not take.
    BufferFull,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::Malformed,
        DropReason::BadChecksum,
        DropReason::Unsupported,
        DropReason::NotOurs,
        DropReason::FlowLimit,
        DropReason::Disabled,
        DropReason::NoFlow,
        DropReason::BufferFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::Unsupported => "unsupported",
            DropReason::NotOurs => "not_ours",
            DropReason::FlowLimit => "flow_limit",
            DropReason::Disabled => "disabled",
            DropReason::NoFlow => "no_flow",
            DropReason::BufferFull => "buffer_full",
        }
    }
}

/// Frame counters of one instance.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    /// Guest connections to N+2 refused because of `--disable-host-loopback`.
    pub refused_host_loopback: u64,
    drops: [u64; DropReason::ALL.len()],
}

impl Counters {
    pub fn frame_in(&mut self, len: usize) {
        self.frames_in += 1;
        self.bytes_in += len as u64;
    }

    pub fn frame_out(&mut self, len: usize) {
        self.frames_out += 1;
        self.bytes_out += len as u64;
    }

    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

/// What happened to guest TCP flows.
#[derive(Debug, Default, Clone)]
pub struct FlowCounters {
    /// Host connect succeeded and the guest got its SYN-ACK.
    pub opened: u64,
    /// Host connect failed; the guest got an RST.
    pub refused: u64,
    /// Ended by a reset from either side.
    pub reset: u64,
    /// Ended by FIN both ways.
    pub closed: u64,
    /// UDP flows opened.
    pub udp_opened: u64,
    /// UDP flows ended by their idle timeout.
    pub udp_expired: u64,
    /// Payload bytes guest -> host of flows that have ended (live flows count their own).
    pub bytes_to_host: u64,
    /// Payload bytes host -> guest of flows that have ended.
    pub bytes_to_guest: u64,
}

/// Datagrams (or segments) and payload bytes one way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    pub fn add(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }
}
