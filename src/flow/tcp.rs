//! One guest TCP connection spliced to one host socket.
//!
//! Bytes move without an intermediate buffer: smoltcp's `recv` hands us its receive ring and
//! we `write` it straight to the host socket; `send` hands us free space in its send ring
//! and we `read` the host socket straight into it. Back-pressure falls out of that: when the
//! host socket will not take more, bytes stay in the guest socket's receive buffer and the
//! window it advertises shrinks; when the guest's send buffer is full we stop reading the
//! host socket and the kernel's window closes. Neither side can make us hold more than the
//! two fixed buffers of the guest socket.
//!
//! Closing mirrors TCP: a FIN from the guest becomes `shutdown(SHUT_WR)` on the host socket
//! once all its data has been written, EOF from the host becomes `close()` on the guest
//! socket (a FIN after the queued data). A reset on either side aborts the other
//! (an RST to the guest; `SO_LINGER` 0 and close, which is an RST, to the host).
//!
//! mio is edge-triggered, so a flow is driven to a standstill each time anything happens to
//! it: a frame from the guest, an event on its host socket, or its timer.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use mio::net::TcpStream;
use smoltcp::socket::tcp::State;
use smoltcp::time::Instant;

use crate::stack::{FlowKey, GuestSocket, Stack};
use crate::stats::latency::{ConnectionTimes, LatencyKind, LatencySample};

/// Where a flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Still carrying data or waiting for one side.
    Alive,
    /// The host connect failed; the guest was refused.
    Refused,
    /// Both sides closed with FIN.
    Closed,
    /// One side reset the connection (or failed); the other was reset too.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Host connect in progress; the guest's SYN-ACK is held.
    Connecting,
    Open,
}

pub struct TcpFlow {
    pub key: FlowKey,
    guest: GuestSocket,
    pub(super) host: TcpStream,
    phase: Phase,
    /// The host sent FIN; the guest socket was told to close after its queued data.
    host_eof: bool,
    /// The guest's FIN was passed on as `shutdown(SHUT_WR)`.
    host_write_shut: bool,
    /// The timer this flow is filed under in the table, if any.
    pub deadline: Option<Instant>,
    /// Took frames in the current TAP batch; listed in the table's dirty list.
    pub dirty: bool,
    /// The port forward whose client this is (an inbound flow), or `None` (outbound).
    pub forward: Option<u64>,
    pub times: ConnectionTimes,
    /// Stream bytes written to the host socket.
    pub to_host_bytes: u64,
    /// Stream bytes read from the host socket for the guest.
    pub to_guest_bytes: u64,
}

impl TcpFlow {
    /// A flow opened at `now`, by the guest (`forward` is `None`) or by a client of a forward.
    pub fn new(
        key: FlowKey,
        guest: GuestSocket,
        host: TcpStream,
        now: Instant,
        forward: Option<u64>,
    ) -> Self {
        TcpFlow {
            key,
            guest,
            host,
            phase: Phase::Connecting,
            host_eof: false,
            host_write_shut: false,
            deadline: None,
            dirty: false,
            forward,
            times: ConnectionTimes::new(now),
            to_host_bytes: 0,
            to_guest_bytes: 0,
        }
    }

    /// Whether the host side has connected and the guest was accepted.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether bytes (or a FIN) from the guest still wait to be written to the host socket.
    pub fn owes_host(&mut self) -> bool {
        let state = self.guest.state();
        self.guest.socket().recv_queue() > 0 || (guest_sent_fin(state) && !self.host_write_shut)
    }

    /// The guest socket, for delivering the flow's frames to the stack.
    pub fn guest_mut(&mut self) -> &mut GuestSocket {
        &mut self.guest
    }

    pub fn guest(&self) -> &GuestSocket {
        &self.guest
    }

    /// `connecting` until the host side connected, then the guest socket's TCP state.
    pub fn state_name(&self) -> String {
        match self.phase {
            Phase::Connecting => "connecting".to_string(),
            Phase::Open => self
                .guest
                .state()
                .to_string()
                .to_lowercase()
                .replace('-', "_"),
        }
    }

    /// Moves everything that can move now, in both directions, and says whether the flow
    /// goes on. Call after any event on the flow. Latencies measured on the way, for the
    /// forward of an inbound flow, are added to `samples`.
    pub fn drive(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        samples: &mut Vec<LatencySample>,
    ) -> Status {
        if self.phase == Phase::Connecting {
            match self.connect_outcome() {
                None => return Status::Alive,
                Some(Ok(())) => {
                    self.phase = Phase::Open;
                    self.guest.accept();
                    if self.forward.is_none() {
                        self.times.connected(now);
                    }
                }
                Some(Err(_)) => {
                    self.guest.refuse();
                    stack.poll_flow(now, &mut self.guest);
                    return Status::Refused;
                }
            }
        }
        // Two rounds: the stack's poll can free send space (ACKs) or fill the receive buffer,
        // and an ACK just freed is worth filling at once.
        for _ in 0..2 {
            if let Err(status) = self.pump(now, samples) {
                stack.poll_flow(now, &mut self.guest);
                return status;
            }
            stack.poll_flow(now, &mut self.guest);
            if self.forward.is_some() && !self.times.is_connected() && self.guest_connected() {
                let latency = self.times.connected(now);
                LatencySample::push(samples, self.forward, LatencyKind::Connect, latency);
            }
        }
        self.status()
    }

    /// The guest answered an inbound flow's SYN (and it did not end at once).
    fn guest_connected(&self) -> bool {
        !matches!(
            self.guest.state(),
            State::SynSent | State::SynReceived | State::Listen | State::Closed
        )
    }

    /// Bytes from the guest went to the host (`to_host`) or the other way.
    fn moved(&mut self, to_host: bool, now: Instant, samples: &mut Vec<LatencySample>) {
        // The opener's bytes are the request: the guest's for an outbound flow.
        if to_host == self.forward.is_none() {
            self.times.request(now);
        } else {
            let latency = self.times.response(now);
            LatencySample::push(samples, self.forward, LatencyKind::FirstByte, latency);
        }
    }

    /// `Some` once the non-blocking host connect has finished.
    fn connect_outcome(&mut self) -> Option<io::Result<()>> {
        match self.host.take_error() {
            Ok(Some(err)) | Err(err) => return Some(Err(err)),
            Ok(None) => {}
        }
        match self.host.peer_addr() {
            Ok(_) => Some(Ok(())),
            Err(err) if err.kind() == io::ErrorKind::NotConnected => None,
            Err(err) => Some(Err(err)),
        }
    }

    /// Copies guest->host and host->guest until one side blocks. `Err` ends the flow.
    fn pump(&mut self, now: Instant, samples: &mut Vec<LatencySample>) -> Result<(), Status> {
        // Guest -> host.
        while self.guest.socket().can_recv() {
            let (guest, host) = (&mut self.guest, &mut self.host);
            let written = guest
                .socket()
                .recv(|buf| match host.write(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                })
                .unwrap_or(Ok(0));
            match written {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host_bytes += n as u64;
                    self.moved(true, now, samples);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(self.reset_both()),
            }
        }
        if !self.host_write_shut
            && guest_sent_fin(self.guest.state())
            && !self.guest.socket().can_recv()
        {
            self.host_write_shut = true;
            let _ = self.host.shutdown(Shutdown::Write);
        }
        // Host -> guest.
        while !self.host_eof && self.guest.socket().can_send() {
            let (guest, host) = (&mut self.guest, &mut self.host);
            let read = guest
                .socket()
                .send(|buf| match host.read(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                })
                .unwrap_or(Ok(0));
            match read {
                Ok(0) => {
                    self.host_eof = true;
                    self.guest.socket().close();
                }
                Ok(n) => {
                    self.to_guest_bytes += n as u64;
                    self.moved(false, now, samples);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(self.reset_both()),
            }
        }
        Ok(())
    }

    /// Where the flow stands after a round of pumping and polling.
    fn status(&mut self) -> Status {
        match self.guest.state() {
            // Listen: an RST from the guest during the handshake returns smoltcp's socket to
            // listening. Closed: reset, timed out, or both FINs done.
            State::Closed | State::Listen => {
                if self.host_eof && self.host_write_shut {
                    Status::Closed
                } else {
                    self.reset_host();
                    Status::Reset
                }
            }
            State::TimeWait if self.host_write_shut => Status::Closed,
            _ => Status::Alive,
        }
    }

    /// Aborts both sides after a host socket error.
    fn reset_both(&mut self) -> Status {
        self.guest.refuse();
        self.reset_host();
        Status::Reset
    }

    /// Makes the host socket's close send an RST instead of a FIN.
    fn reset_host(&mut self) {
        let _ = socket2::SockRef::from(&self.host).set_linger(Some(Duration::ZERO));
    }
}

/// Whether the guest has closed its sending side (a FIN arrived).
fn guest_sent_fin(state: State) -> bool {
    matches!(
        state,
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    )
}
