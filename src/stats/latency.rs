//! Latency histograms of one port forward: how long connects and first bytes take.
//!
//! HDR histograms (the `hdrhistogram` crate) keep every sample at a fixed relative precision
//! in constant memory, so percentiles stay exact to 1% however many connections a forward
//! sees, and recording is an index computation and an increment. Two significant digits over
//! 1 µs .. 1 hour keep each histogram near 10 KiB (u32 counts), which matters with up to a
//! thousand forwards.

use hdrhistogram::Histogram;
use smoltcp::time::Instant;

use super::report::LatencySummary;

/// Largest latency recorded exactly; longer ones count as this (one hour, in µs).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant decimal digits kept of each sample.
const SIGNIFICANT_DIGITS: u8 = 2;

/// One latency histogram, in microseconds.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u32>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            // The bounds are constants that hdrhistogram accepts; this cannot fail.
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
        }
    }
}

impl LatencyHistogram {
    /// Adds one sample; values past the range count as the largest value.
    pub fn record_us(&mut self, micros: u64) {
        self.hist.saturating_record(micros.max(1));
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// p50, p90, p99, max and mean; zeros while empty.
    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            p50_us: self.hist.value_at_quantile(0.50),
            p90_us: self.hist.value_at_quantile(0.90),
            p99_us: self.hist.value_at_quantile(0.99),
            max_us: self.hist.max(),
            mean_us: (self.hist.mean() * 10.0).round() / 10.0,
        }
    }
}

/// The two histograms of a TCP forward.
#[derive(Debug, Clone, Default)]
pub struct ForwardLatency {
    /// Host accept until the guest's SYN-ACK.
    pub connect: LatencyHistogram,
    /// First request byte in until the first response byte out.
    pub first_byte: LatencyHistogram,
}

/// A latency a flow measured, for the histograms of the forward that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySample {
    pub forward: u64,
    pub kind: LatencyKind,
    pub micros: u64,
}

impl LatencySample {
    /// Adds a latency measured on a connection of `forward` to `samples`, when the connection
    /// belongs to a forward and the latency was measured (just now, for the first time).
    pub fn push(
        samples: &mut Vec<LatencySample>,
        forward: Option<u64>,
        kind: LatencyKind,
        micros: Option<u64>,
    ) {
        if let (Some(forward), Some(micros)) = (forward, micros) {
            samples.push(LatencySample {
                forward,
                kind,
                micros,
            });
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyKind {
    Connect,
    FirstByte,
}

impl ForwardLatency {
    pub fn record(&mut self, kind: LatencyKind, micros: u64) {
        match kind {
            LatencyKind::Connect => self.connect.record_us(micros),
            LatencyKind::FirstByte => self.first_byte.record_us(micros),
        }
    }
}

/// When the milestones of one TCP connection happened, for its connect and first-byte
/// latencies. The opener is the side that sent the SYN: the guest for an outbound flow, a
/// forward's client for an inbound one.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTimes {
    /// The opener's SYN arrived (outbound) or its connection was accepted (inbound).
    pub opened: Instant,
    connected: Option<Instant>,
    /// The opener's first byte came in.
    first_request: Option<Instant>,
    /// The other side's first byte went out.
    first_response: Option<Instant>,
}

impl ConnectionTimes {
    pub fn new(opened: Instant) -> Self {
        ConnectionTimes {
            opened,
            connected: None,
            first_request: None,
            first_response: None,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.is_some()
    }

    /// Both sides are connected; the connect latency, the first time only.
    pub fn connected(&mut self, now: Instant) -> Option<u64> {
        if self.connected.is_some() {
            return None;
        }
        self.connected = Some(now);
        self.connect_us()
    }

    /// Bytes from the opener came in.
    pub fn request(&mut self, now: Instant) {
        self.first_request.get_or_insert(now);
    }

    /// Bytes from the other side went out; the first-byte latency, the first time only.
    pub fn response(&mut self, now: Instant) -> Option<u64> {
        if self.first_response.is_some() {
            return None;
        }
        self.first_response = Some(now);
        self.first_byte_us()
    }

    pub fn connect_us(&self) -> Option<u64> {
        Some((self.connected? - self.opened).total_micros())
    }

    /// From the opener's first byte to the first byte back; from the connect when the other
    /// side spoke first (a server that greets, like SSH or SMTP).
    pub fn first_byte_us(&self) -> Option<u64> {
        let response = self.first_response?;
        let start = match self.first_request {
            Some(request) if request <= response => request,
            _ => self.connected.unwrap_or(self.opened),
        };
        Some((response - start).total_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_histogram_summarises_as_zeros() {
        assert_eq!(
            LatencyHistogram::default().summary(),
            LatencySummary::default()
        );
    }

    #[test]
    fn percentiles_come_within_one_percent_of_the_samples() {
        let mut h = LatencyHistogram::default();
        for us in 1..=1000 {
            h.record_us(us * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        for (got, want) in [
            (s.p50_us, 500_000),
            (s.p90_us, 900_000),
            (s.p99_us, 990_000),
        ] {
            assert!(got.abs_diff(want) <= want / 100, "{got} vs {want}");
        }
        assert!(s.max_us.abs_diff(1_000_000) <= 10_000);
    }

    #[test]
    fn samples_beyond_the_range_are_kept_as_the_largest_value() {
        let mut h = LatencyHistogram::default();
        h.record_us(u64::MAX);
        h.record_us(0);
        assert_eq!(h.count(), 2);
        assert!(h.summary().max_us >= MAX_LATENCY_US / 100 * 99);
    }

    #[test]
    fn first_byte_runs_from_the_request_to_the_response() {
        let mut t = ConnectionTimes::new(Instant::from_millis(0));
        assert_eq!(t.connected(Instant::from_millis(2)), Some(2_000));
        assert_eq!(t.connected(Instant::from_millis(3)), None, "recorded once");
        t.request(Instant::from_millis(10));
        t.request(Instant::from_millis(11));
        assert_eq!(t.response(Instant::from_millis(510)), Some(500_000));
        assert_eq!(t.response(Instant::from_millis(600)), None, "recorded once");
        assert_eq!(
            (t.connect_us(), t.first_byte_us()),
            (Some(2_000), Some(500_000))
        );
    }

    #[test]
    fn a_server_that_speaks_first_is_timed_from_the_connect() {
        let mut t = ConnectionTimes::new(Instant::from_millis(0));
        t.connected(Instant::from_millis(1));
        assert_eq!(t.response(Instant::from_millis(41)), Some(40_000));
    }

    #[test]
    fn a_histogram_stays_small() {
        let h = LatencyHistogram::default();
        assert!(
            h.hist.distinct_values() * 4 <= 16 * 1024,
            "{}",
            h.hist.distinct_values()
        );
    }
}
