//! The splice fast path: a forwarded connection from a client on the host's loopback, carried
//! by the kernel alone.
//!
//! tapsplice accepts the client as usual, gets a TCP socket made inside the container's network
//! namespace (by the helper in `sys::nshelper`), connects it to the guest's address and port,
//! and from then on moves bytes between the two kernel sockets with `splice(2)` through a pipe
//! per direction. No frame crosses the TAP, no userspace TCP runs, no byte is copied into
//! tapsplice's memory: throughput is that of loopback TCP, not of a userspace stack.
//!
//! What the guest sees: a connection from its own address (the destination address, e.g.
//! 10.0.2.100, since the connection is local to its namespace) rather than from N+2 or from
//! the client. That is the price of the fast path; `--forward-path=stack` gives the guest
//! N+2 as slirp4netns does.
//!
//! Each direction is a small state machine: socket -> pipe while the pipe has room, pipe ->
//! socket while the socket takes bytes; end of stream on the source becomes `shutdown(SHUT_WR)`
//! on the destination once the pipe is empty (half-close is passed on); an error on either
//! socket resets the other (`SO_LINGER` 0, then close). Everything is non-blocking and
//! edge-triggered, so a connection is driven until it would block; a fast one yields after a
//! budget of rounds so that others, and the TAP, get their turn.

use std::io;
use std::net::{Shutdown, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use mio::net::TcpStream;
use smoltcp::time::Instant;

use crate::stats::latency::{ConnectionTimes, LatencyKind, LatencySample};
use crate::sys::splice::{pipe, pipe_size, splice};
/// Rounds (each up to a pipe's worth per direction) before a connection yields.
const ROUNDS_PER_DRIVE: usize = 32;

/// What became of a connection after it was driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceStatus {
    /// Waiting for readiness.
    Alive,
    /// Stopped with work left (its budget ran out): drive again soon.
    MoreWork,
    /// Both directions ended with end of stream.
    Closed,
    /// The guest refused the connection; the client was reset.
    Refused,
    /// An error on one side; the other was reset.
    Reset,
}

/// One direction: source socket -> pipe -> destination socket.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    cap: usize,
    /// Bytes in the pipe.
    held: usize,
    /// Bytes that went through, in total.
    pub moved: u64,
    src_eof: bool,
    dst_shut: bool,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        // The default size (64 KiB): 256 KiB and 1 MiB pipes measured no faster here, and
        // a larger pipe uses more of an unprivileged user's pipe quota
        // (`/proc/sys/fs/pipe-user-pages-soft`), past which new pipes get one page.
        let (read, write) = pipe()?;
        let cap = pipe_size(write.as_fd())?;
        Ok(Pipe {
            read,
            write,
            cap,
            held: 0,
            moved: 0,
            src_eof: false,
            dst_shut: false,
        })
    }

    fn done(&self) -> bool {
        self.dst_shut
    }

    /// Bytes taken from the source and not yet given to the destination.
    pub fn held(&self) -> usize {
        self.held
    }

    /// One round: fill the pipe from `src`, empty it into `dst`, pass on end of stream.
    /// `Ok(true)` if anything moved.
    fn round(&mut self, src: &TcpStream, dst: &TcpStream) -> io::Result<bool> {
        let mut moved = false;
        if !self.src_eof && self.held < self.cap {
            match splice(src.as_fd(), self.write.as_fd(), self.cap - self.held) {
                Ok(0) => {
                    self.src_eof = true;
                    moved = true;
                }
                Ok(n) => {
                    self.held += n;
                    moved = true;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if self.held > 0 {
            match splice(self.read.as_fd(), dst.as_fd(), self.held) {
                Ok(n) => {
                    self.held -= n;
                    self.moved += n as u64;
                    moved |= n > 0;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if self.src_eof && self.held == 0 && !self.dst_shut {
            self.dst_shut = true;
            let _ = dst.shutdown(Shutdown::Write);
            moved = true;
        }
        Ok(moved)
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A forwarded connection carried by `splice`.
pub struct SpliceConn {
    pub client: TcpStream,
    pub inner: TcpStream,
    connected: bool,
    /// Client -> guest.
    pub up: Pipe,
    /// Guest -> client.
    pub down: Pipe,
    /// The forwarder's source indices of `client` and `inner` (their tokens).
    pub sources: [usize; 2],
    /// The forward that accepted the client.
    pub forward: u64,
    /// Accept, connect inside the namespace, first bytes.
    pub times: ConnectionTimes,
}

impl SpliceConn {
    /// Starts connecting `socket` (made inside the guest's namespace) to `guest`, for `client`.
    /// On failure the client is handed back, untouched.
    pub fn connect(
        client: TcpStream,
        socket: OwnedFd,
        guest: SocketAddrV4,
        forward: u64,
        accepted: Instant,
    ) -> Result<Self, (io::Error, TcpStream)> {
        let pipes = Pipe::new().and_then(|up| Ok((up, Pipe::new()?)));
        let (up, down) = match pipes {
            Ok(pipes) => pipes,
            Err(e) => return Err((e, client)),
        };
        let socket = socket2::Socket::from(socket);
        let started = socket
            .set_nonblocking(true)
            .and_then(|()| socket.connect(&socket2::SockAddr::from(guest)));
        match started {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err((e, client)),
        }
        let _ = socket.set_tcp_nodelay(true);
        let _ = client.set_nodelay(true);
        let inner = TcpStream::from_std(std::net::TcpStream::from(socket));
        Ok(SpliceConn {
            client,
            inner,
            connected: false,
            up,
            down,
            sources: [usize::MAX; 2],
            forward,
            times: ConnectionTimes::new(accepted),
        })
    }

    /// Moves what can move now, both ways. Latencies measured on the way go to `samples`.
    pub fn drive(&mut self, now: Instant, samples: &mut Vec<LatencySample>) -> SpliceStatus {
        if !self.connected {
            match self.connect_outcome() {
                None => return SpliceStatus::Alive,
                Some(Ok(())) => {
                    self.connected = true;
                    let latency = self.times.connected(now);
                    LatencySample::push(samples, Some(self.forward), LatencyKind::Connect, latency);
                }
                Some(Err(_)) => {
                    reset(&self.client);
                    return SpliceStatus::Refused;
                }
            }
        }
        for _ in 0..ROUNDS_PER_DRIVE {
            let (up_before, down_before) = (self.up.moved, self.down.moved);
            let up = self.up.round(&self.client, &self.inner);
            let down = self.down.round(&self.inner, &self.client);
            if self.up.moved > up_before {
                self.times.request(now);
            }
            if self.down.moved > down_before {
                let latency = self.times.response(now);
                LatencySample::push(samples, Some(self.forward), LatencyKind::FirstByte, latency);
            }
            match (up, down) {
                (Ok(false), Ok(false)) => {
                    return if self.up.done() && self.down.done() {
                        SpliceStatus::Closed
                    } else {
                        SpliceStatus::Alive
                    };
                }
                (Ok(_), Ok(_)) => {}
                _ => {
                    reset(&self.client);
                    reset(&self.inner);
                    return SpliceStatus::Reset;
                }
            }
        }
        SpliceStatus::MoreWork
    }

    /// `Some` once the non-blocking connect inside the namespace has finished.
    fn connect_outcome(&self) -> Option<io::Result<()>> {
        match self.inner.take_error() {
            Ok(Some(err)) | Err(err) => return Some(Err(err)),
            Ok(None) => {}
        }
        match self.inner.peer_addr() {
            Ok(_) => Some(Ok(())),
            Err(err) if err.kind() == io::ErrorKind::NotConnected => None,
            Err(err) => Some(Err(err)),
        }
    }
}

/// Makes the socket's close send an RST.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
