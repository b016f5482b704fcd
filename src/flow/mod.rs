//! The NAT: guest TCP flows, each tied to one host socket.
//!
//! Flows live in a slab (their index is also their mio token) and are found by 5-tuple
//! through a hash map, so the cost per frame does not depend on how many flows exist.
//! Timers (retransmissions, delayed closes) are kept in an ordered set keyed by deadline,
//! so the event loop can sleep until the earliest one and wake only the flows that are due.
//!
//! A guest SYN creates a flow and starts a non-blocking connect to the same address on the
//! host (N+2 becomes 127.0.0.1). The guest gets its SYN-ACK only when that connect succeeds,
//! and an RST when it fails: a connection is never accepted that the host cannot make.

mod inbound;
mod tcp;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use mio::{Interest, Registry, Token};
use slab::Slab;
use smoltcp::time::Instant;

use crate::stack::{self, FlowKey, Stack};
use crate::stats::{DropReason, FlowCounters};
use tcp::{Status, TcpFlow};

pub use inbound::InboundRefused;

/// Most guest TCP flows at once; a SYN beyond this is answered with an RST and counted.
pub const MAX_TCP_FLOWS: usize = 16_384;

/// mio tokens below this belong to the event loop; a flow's token is this plus its index.
pub const FIRST_FLOW_TOKEN: usize = 16;

#[derive(Default)]
pub struct FlowTable {
    by_key: HashMap<FlowKey, usize>,
    flows: Slab<TcpFlow>,
    timers: BTreeSet<(Instant, usize)>,
    /// Flows that took frames in the current TAP batch and still need driving.
    dirty: Vec<usize>,
    pub counters: FlowCounters,
}

impl FlowTable {
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The flow a mio token belongs to, if the token is a flow's.
    pub fn index_of(token: Token) -> Option<usize> {
        token.0.checked_sub(FIRST_FLOW_TOKEN)
    }

    /// Handles a TCP segment from the guest that [`Stack::classify`] attributed to `key`.
    pub fn on_guest_segment(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        registry: &Registry,
        key: FlowKey,
        opens: bool,
    ) {
        if let Some(&index) = self.by_key.get(&key) {
            let flow = &mut self.flows[index];
            stack.deliver_batched(now, flow.guest_mut());
            if !flow.dirty {
                flow.dirty = true;
                self.dirty.push(index);
            }
        } else if opens {
            self.open(now, stack, registry, key);
        } else {
            // No flow: smoltcp answers with an RST (or ignores an RST).
            stack.deliver(now, None);
        }
    }

    fn open(&mut self, now: Instant, stack: &mut Stack, registry: &Registry, key: FlowKey) {
        let host_addr = stack::host_destination(stack.config(), key.remote);
        if self.flows.len() >= MAX_TCP_FLOWS || host_addr.is_none() {
            if host_addr.is_some() {
                stack.counters.drop(DropReason::FlowLimit);
            }
            stack.deliver(now, None);
            return;
        }
        let mut guest = stack.open_guest_socket(key);
        stack.deliver(now, Some(&mut guest));
        if guest.state() != smoltcp::socket::tcp::State::SynReceived {
            // smoltcp did not take the SYN (e.g. port 0); it answered for itself.
            return;
        }
        let host = match host_addr
            .map(SocketAddr::V4)
            .map(mio::net::TcpStream::connect)
        {
            Some(Ok(host)) => host,
            _ => {
                guest.refuse();
                stack.poll_flow(now, &mut guest);
                self.counters.refused += 1;
                return;
            }
        };
        let _ = host.set_nodelay(true);
        let entry = self.flows.vacant_entry();
        let index = entry.key();
        let mut flow = TcpFlow::new(key, guest, host);
        let token = Token(FIRST_FLOW_TOKEN + index);
        if registry
            .register(
                &mut flow.host,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            flow.guest_mut().refuse();
            stack.poll_flow(now, flow.guest_mut());
            self.counters.refused += 1;
            return;
        }
        entry.insert(flow);
        self.by_key.insert(key, index);
        tracing::debug!(guest = %key.guest, remote = %key.remote, "tcp flow connecting");
    }

    /// Drives the flows that took frames since the last call (end of a TAP batch).
    pub fn drive_dirty(&mut self, now: Instant, stack: &mut Stack, registry: &Registry) {
        while let Some(index) = self.dirty.pop() {
            if let Some(flow) = self.flows.get_mut(index) {
                flow.dirty = false;
                self.drive(now, stack, registry, index);
            }
        }
    }

    /// Handles readiness of a flow's host socket.
    pub fn on_host_event(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        registry: &Registry,
        index: usize,
    ) {
        if self.flows.contains(index) {
            self.drive(now, stack, registry, index);
        }
    }

    /// Drives every flow whose timer is due.
    pub fn on_timers(&mut self, now: Instant, stack: &mut Stack, registry: &Registry) {
        // Take the due timers out first: driving a flow can file it again at `now` (smoltcp
        // wants to send but the TAP queue is full), and re-reading the set would then spin
        // here forever instead of returning to flush the queue.
        let later = self
            .timers
            .split_off(&(now + smoltcp::time::Duration::from_micros(1), 0));
        let due = std::mem::replace(&mut self.timers, later);
        for (_, index) in due {
            if let Some(flow) = self.flows.get_mut(index) {
                flow.deadline = None;
                self.drive(now, stack, registry, index);
            }
        }
    }

    /// The earliest flow timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|&(deadline, _)| deadline)
    }

    fn drive(&mut self, now: Instant, stack: &mut Stack, registry: &Registry, index: usize) {
        let flow = &mut self.flows[index];
        let was_connecting = !flow.is_open();
        let status = flow.drive(now, stack);
        match status {
            Status::Alive => {
                if was_connecting && flow.is_open() {
                    self.counters.opened += 1;
                }
                let next = stack.poll_at(now, flow.guest_mut());
                if next != flow.deadline {
                    if let Some(old) = flow.deadline.take() {
                        self.timers.remove(&(old, index));
                    }
                    if let Some(new) = next {
                        self.timers.insert((new, index));
                    }
                    flow.deadline = next;
                }
            }
            Status::Refused | Status::Closed | Status::Reset => {
                match status {
                    Status::Refused => self.counters.refused += 1,
                    Status::Closed => self.counters.closed += 1,
                    _ => self.counters.reset += 1,
                }
                self.remove(registry, index);
            }
        }
    }

    fn remove(&mut self, registry: &Registry, index: usize) {
        let mut flow = self.flows.remove(index);
        if flow.dirty {
            self.dirty.retain(|&i| i != index);
        }
        if let Some(deadline) = flow.deadline {
            self.timers.remove(&(deadline, index));
        }
        self.by_key.remove(&flow.key);
        let _ = registry.deregister(&mut flow.host);
        tracing::debug!(guest = %flow.key.guest, remote = %flow.key.remote, "tcp flow ended");
        // Dropping `flow` closes the host socket.
    }
}
