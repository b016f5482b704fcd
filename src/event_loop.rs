//! The one thread that moves every byte: a mio `Poll` over the TAP, the flows' host
//! sockets, signals, the exit fd and (in `run` mode) the child process.
//!
//! Each wake-up reads a bounded batch of frames from the TAP, hands each to the stack and
//! its flow, handles host socket events, fires due timers, and writes out whatever frames
//! were queued. The loop holds no protocol state; it only dispatches on the token of each
//! event and keeps time, which it passes down as a parameter.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::config::NetConfig;
use crate::flow::FlowTable;
use crate::forward::{self, ForwardError, ForwardSetup, Forwarder};
use crate::stack::{Ingress, Stack};
use crate::stats::pcap::{Capturer, PcapOptions};
use crate::sys::process::IsolatedChild;

const TAP: Token = Token(0);
const SIGNALS: Token = Token(1);
const EXIT_FD: Token = Token(2);
const CHILD: Token = Token(3);

/// How long `run` goes on moving the command's last bytes to their hosts after it exited.
const CHILD_DRAIN: Duration = Duration::from_secs(2);

/// How often the drain after the child's exit checks whether it is done.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// Frames read from the TAP per wake-up before host sockets get a turn.
const TAP_BATCH: usize = 128;

/// Why the loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// SIGTERM or SIGINT.
    Signal(Signal),
    /// The `--exit-fd` was closed by the other side (or was never open).
    ExitFd,
    /// The `run` child exited with this status.
    ChildExited(i32),
}

/// Monotonic time as smoltcp wants it, counted from the loop's start.
struct Clock(std::time::Instant);

impl Clock {
    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.0.elapsed().as_micros() as i64)
    }
}

pub struct EventLoop {
    poll: Poll,
    clock: Clock,
    tap: OwnedFd,
    stack: Stack,
    flows: FlowTable,
    /// Port forwards and the API socket.
    forward: Forwarder,
    signals: SignalFd,
    /// Held so the descriptor registered as `EXIT_FD` stays open; only its events matter.
    _exit_fd: Option<OwnedFd>,
    /// An `--exit-fd` that was not open: exit as soon as the loop runs.
    exit_fd_missing: bool,
    child: Option<(IsolatedChild, OwnedFd)>,
    /// The `run` child's exit status, and until when the loop may still drain towards hosts.
    child_exited: Option<(i32, std::time::Instant)>,
    /// Frames may still be waiting in the TAP (the last batch hit its limit).
    tap_readable: bool,
    /// The last write to the TAP would have blocked.
    tap_blocked: bool,
    /// Copies frames to a pcap file while a capture runs.
    capture: Capturer,
}

impl EventLoop {
    /// Sets up the loop. Signals are blocked and routed to the loop from here on, so this
    /// must come after every fork that should keep default signal handling.
    pub fn new(
        cfg: NetConfig,
        tap: OwnedFd,
        exit_fd: Option<Option<OwnedFd>>,
        child: Option<IsolatedChild>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let registry = poll.registry();
        registry.register(
            &mut SourceFd(&tap.as_raw_fd()),
            TAP,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().map_err(io::Error::from)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        registry.register(
            &mut SourceFd(&signals.as_fd().as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let exit_fd_missing = matches!(exit_fd, Some(None));
        let exit_fd = exit_fd.flatten();
        if let Some(fd) = &exit_fd {
            registry.register(&mut SourceFd(&fd.as_raw_fd()), EXIT_FD, Interest::READABLE)?;
        }
        let child = match child {
            Some(child) => {
                let pidfd = child.pidfd().map_err(io::Error::other)?;
                registry.register(&mut SourceFd(&pidfd.as_raw_fd()), CHILD, Interest::READABLE)?;
                Some((child, pidfd))
            }
            None => None,
        };
        let clock = Clock(std::time::Instant::now());
        let flows = FlowTable::new(cfg.clone());
        let forward = Forwarder::new(cfg.clone());
        let stack = Stack::new(cfg, clock.now());
        Ok(EventLoop {
            poll,
            clock,
            tap,
            stack,
            flows,
            forward,
            signals,
            _exit_fd: exit_fd,
            exit_fd_missing,
            child,
            child_exited: None,
            tap_readable: true,
            tap_blocked: false,
            capture: Capturer::default(),
        })
    }

    /// Lets the `run` child exec its command (the network is up).
    pub fn start_child(&mut self) -> io::Result<()> {
        match &mut self.child {
            Some((child, _)) => child.start().map_err(io::Error::other),
            None => Ok(()),
        }
    }

    /// Opens the API socket, the metrics endpoint and the `-p` forwards, starts the splice
    /// path's helper, then the `--pcap` capture (its writer is a thread, so it comes after
    /// the helper's fork). Must be called while this process is single-threaded, before
    /// [`EventLoop::run`].
    pub fn start_forwarding(&mut self, setup: &ForwardSetup) -> Result<(), ForwardError> {
        self.forward.start(setup, self.poll.registry())?;
        if let Some(path) = &setup.pcap {
            let options = PcapOptions {
                path: path.clone(),
                snaplen: 0,
                max_bytes: 0,
            };
            self.capture
                .start(options)
                .map_err(|e| ForwardError::Pcap(e.to_string()))?;
        }
        Ok(())
    }

    /// Runs until a signal, the exit fd or the child ends it.
    pub fn run(&mut self) -> io::Result<Outcome> {
        let mut events = Events::with_capacity(256);
        loop {
            if self.exit_fd_missing {
                return Ok(Outcome::ExitFd);
            }
            if let Some((status, until)) = self.child_exited {
                // What the command sent before it exited still reaches its hosts.
                let drained = !self.tap_readable && !self.flows.owe_hosts();
                if drained || std::time::Instant::now() >= until {
                    return Ok(Outcome::ChildExited(status));
                }
            }
            let now = self.clock.now();
            let next_advert = self.stack.poll_router_advert(now);
            let timeout = if self.tap_readable || self.forward.has_pending() {
                Some(Duration::ZERO)
            } else {
                [
                    self.flows.next_deadline(),
                    self.forward.next_deadline(),
                    next_advert,
                ]
                .into_iter()
                .flatten()
                .min()
                .map(|d| Duration::from_micros((d - now.min(d)).total_micros()))
            };
            // While draining after the child exited, look again soon even if nothing happens.
            let timeout = match (self.child_exited, timeout) {
                (Some(_), Some(t)) => Some(t.min(DRAIN_TICK)),
                (Some(_), None) => Some(DRAIN_TICK),
                (None, t) => t,
            };
            if self.stack.tx_pending() > 0 {
                self.flush_tap()?;
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = self.clock.now();
            for event in events.iter() {
                match event.token() {
                    TAP => {
                        if event.is_readable() {
                            self.tap_readable = true;
                        }
                        if event.is_writable() {
                            self.tap_blocked = false;
                        }
                    }
                    SIGNALS => {
                        if let Some(outcome) = self.on_signal() {
                            return Ok(outcome);
                        }
                    }
                    // The other side closed its end (EPOLLHUP). Data written to the fd means
                    // nothing, so it is left unread.
                    EXIT_FD if event.is_read_closed() || event.is_error() => {
                        return Ok(Outcome::ExitFd);
                    }
                    EXIT_FD => {}
                    token if forward::owns(token) => {
                        let mut cx = forward::Ctx {
                            now,
                            stack: &mut self.stack,
                            flows: &mut self.flows,
                            registry: self.poll.registry(),
                            capture: &mut self.capture,
                        };
                        self.forward.on_event(&mut cx, token);
                    }
                    CHILD => {
                        if let Some((mut child, _pidfd)) = self.child.take() {
                            let drain_until = std::time::Instant::now() + CHILD_DRAIN;
                            self.child_exited = Some((child.reap(), drain_until));
                        }
                    }
                    token if FlowTable::owns(token) => {
                        let registry = self.poll.registry();
                        self.flows
                            .on_host_event(now, &mut self.stack, registry, token);
                    }
                    _ => {}
                }
            }
            if self.tap_readable {
                match self.read_tap(now) {
                    Ok(()) => {}
                    // The command's namespace may be gone with it; its status is the outcome.
                    Err(_) if self.child_exited.is_some() => self.tap_readable = false,
                    Err(e) => return Err(e),
                }
            }
            self.flows
                .on_timers(now, &mut self.stack, self.poll.registry());
            if self.stack.take_neighbor_news() {
                self.flows
                    .on_neighbor_learned(now, &mut self.stack, self.poll.registry());
            }
            let mut cx = forward::Ctx {
                now,
                stack: &mut self.stack,
                flows: &mut self.flows,
                registry: self.poll.registry(),
                capture: &mut self.capture,
            };
            self.forward.on_timers(&mut cx);
            self.flush_tap()?;
            self.capture.flush();
        }
    }

    fn read_tap(&mut self, now: smoltcp::time::Instant) -> io::Result<()> {
        for _ in 0..TAP_BATCH {
            let len = match nix::unistd::read(&self.tap, self.stack.rx_buffer()) {
                Ok(0) => return Err(io::Error::other("TAP device closed")),
                Ok(len) => len,
                Err(Errno::EAGAIN) => {
                    self.tap_readable = false;
                    break;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e)),
            };
            self.capture.frame(&self.stack.rx_buffer()[..len]);
            let registry = self.poll.registry();
            let stack = &mut self.stack;
            match stack.classify(now, len) {
                Ingress::Tcp { key, opens } => self
                    .flows
                    .on_guest_segment(now, stack, registry, key, opens),
                // Answers to port forwards' clients go to them; the rest is the NAT's.
                Ingress::Udp { key } if self.forward.on_guest_udp(now, stack, key) => {}
                Ingress::Udp { key } => self.flows.on_guest_datagram(now, stack, registry, key),
                Ingress::Echo(request) => self.flows.on_guest_echo(now, stack, registry, request),
                Ingress::Handled | Ingress::Dropped(_) => {}
            }
            self.stack.teach_neighbors(now);
        }
        self.flows
            .drive_dirty(now, &mut self.stack, self.poll.registry());
        Ok(())
    }

    fn flush_tap(&mut self) -> io::Result<()> {
        while !self.tap_blocked {
            let Some(frame) = self.stack.next_tx() else {
                break;
            };
            match nix::unistd::write(&self.tap, frame) {
                Ok(_) => {
                    self.capture.frame(frame);
                    self.stack.tx_done();
                }
                Err(Errno::EAGAIN) => self.tap_blocked = true,
                Err(Errno::EINTR) => {}
                // The guest's interface is down or gone: the frame is lost, like on a wire.
                Err(Errno::EIO) | Err(Errno::EINVAL) => self.stack.tx_done(),
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        Ok(())
    }

    fn on_signal(&mut self) -> Option<Outcome> {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match &self.child {
                // In `run` mode the command decides: pass the signal on and exit with it.
                Some((child, _)) => child.signal(sig),
                None => return Some(Outcome::Signal(sig)),
            }
        }
        None
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    pub fn forwarder(&self) -> &Forwarder {
        &self.forward
    }
}
