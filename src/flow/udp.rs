//! One guest UDP flow (guest address and port to one destination) on one connected host
//! UDP socket.
//!
//! A connected socket receives only its destination's replies, and the kernel reports ICMP
//! errors for it as `ECONNREFUSED` (port unreachable) or `EHOSTUNREACH`/`ENETUNREACH` on the
//! next call; those go back to the guest as the ICMP message it would have received. Replies
//! are read straight into the frame that carries them to the guest. UDP has no end, so a flow
//! ends when it has been idle for its timeout, like a conntrack entry: short until the first
//! reply, longer once traffic goes both ways.

use std::io;
use std::time::Duration;

use mio::net::UdpSocket;
use smoltcp::time::Instant;

use crate::stack::{FlowKey, Stack, Unreachable};
use crate::stats::{DropReason, Traffic};
use crate::sys::socket::recv_datagram;

/// How long a UDP flow may stay idle: before its first reply, and after.
#[derive(Debug, Clone, Copy)]
pub struct IdleTimeouts {
    pub unanswered: Duration,
    pub answered: Duration,
}

pub struct UdpFlow {
    pub key: FlowKey,
    pub(super) host: UdpSocket,
    timeouts: IdleTimeouts,
    last_active: Instant,
    replied: bool,
    /// The timer this flow is filed under in the table, if any.
    pub deadline: Option<Instant>,
    pub opened: Instant,
    pub to_host: Traffic,
    pub to_guest: Traffic,
}

/// What the host socket's error means for the guest, if it is an ICMP report.
fn unreachable_reason(err: &io::Error) -> Option<Unreachable> {
    match err.raw_os_error()? {
        libc::ECONNREFUSED => Some(Unreachable::Port),
        libc::EHOSTUNREACH => Some(Unreachable::Host),
        libc::ENETUNREACH => Some(Unreachable::Net),
        _ => None,
    }
}

impl UdpFlow {
    pub fn new(key: FlowKey, host: UdpSocket, timeouts: IdleTimeouts, now: Instant) -> Self {
        UdpFlow {
            key,
            host,
            timeouts,
            last_active: now,
            replied: false,
            deadline: None,
            opened: now,
            to_host: Traffic::default(),
            to_guest: Traffic::default(),
        }
    }

    /// Sends one guest datagram to the host side. A full socket buffer drops it, as a
    /// congested link would.
    pub fn send_to_host(&mut self, now: Instant, stack: &mut Stack) {
        self.last_active = now;
        match self.host.send(stack.received_payload()) {
            Ok(n) => self.to_host.add(n),
            Err(e) => {
                if let Some(reason) = unreachable_reason(&e) {
                    stack.send_udp_unreachable(self.key, reason);
                } else {
                    stack.counters.drop(DropReason::BufferFull);
                    tracing::debug!(guest = %self.key.guest, remote = %self.key.remote, error = %e, "udp send dropped");
                }
            }
        }
        stack.consume_received();
    }

    /// Passes datagrams from the host socket to the guest until it would block.
    pub fn deliver_to_guest(&mut self, now: Instant, stack: &mut Stack) {
        let capacity = stack.udp_payload_capacity(self.key.guest.ip());
        // mio is edge-triggered: read until the socket would block, or what is left in it
        // waits for the next datagram to arrive.
        loop {
            let mut outcome = Ok(0);
            let host = &self.host;
            let sent = stack.send_udp(self.key.remote, self.key.guest, |buf| {
                outcome = recv_datagram(host, buf);
                // Larger than one frame: IPv4 fragmentation is not carried, drop it.
                outcome.as_ref().ok().copied().filter(|&n| n <= capacity)
            });
            if let Some(n) = sent {
                self.to_guest.add(n);
            }
            match outcome {
                Ok(_) => {
                    self.last_active = now;
                    self.replied = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => match unreachable_reason(&e) {
                    Some(reason) => stack.send_udp_unreachable(self.key, reason),
                    None => return,
                },
            }
        }
    }

    /// When the flow expires if nothing more happens.
    pub fn expires_at(&self) -> Instant {
        let idle = if self.replied {
            self.timeouts.answered
        } else {
            self.timeouts.unanswered
        };
        self.last_active + smoltcp::time::Duration::from_micros(idle.as_micros() as u64)
    }
}
