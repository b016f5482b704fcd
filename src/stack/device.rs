//! The smoltcp `Device` between the stack and the TAP: one received frame in, a queue of
//! frames to send out. No I/O happens here; the event loop reads frames into
//! [`FrameDevice::rx_buffer`] and writes out what [`FrameDevice::pop_tx`] yields.
//!
//! Buffers are allocated once and reused: smoltcp's own `TunTapInterface` allocates and
//! zero-fills an MTU-sized `Vec` for every frame, which at MTU 65520 costs a third of all
//! CPU time. Transmit buffers keep their size between uses, so a buffer is zero-filled only
//! the first time it grows.

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Ethernet header length: destination MAC, source MAC, EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// Frames waiting for the TAP. Past this the stack is told the device is busy and keeps its
/// segments for later, instead of queueing without bound.
pub const TX_QUEUE_LIMIT: usize = 1024;

/// Spare transmit buffers kept for reuse.
const TX_FREE_LIMIT: usize = 64;

#[derive(Default)]
struct TxQueue {
    /// Frames ready to send: a buffer and the length used in it.
    ready: VecDeque<(Vec<u8>, usize)>,
    free: Vec<Vec<u8>>,
}

impl TxQueue {
    fn push_with<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut buf = self.free.pop().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let r = fill(&mut buf[..len]);
        self.ready.push_back((buf, len));
        r
    }
}

/// The stack's view of the TAP device.
pub struct FrameDevice {
    /// Largest Ethernet frame: IP MTU plus the Ethernet header.
    frame_mtu: usize,
    rx: Vec<u8>,
    rx_len: Option<usize>,
    tx: TxQueue,
}

impl FrameDevice {
    pub fn new(ip_mtu: usize) -> Self {
        let frame_mtu = ip_mtu + ETHERNET_HEADER_LEN;
        FrameDevice {
            frame_mtu,
            rx: vec![0; frame_mtu],
            rx_len: None,
            tx: TxQueue::default(),
        }
    }

    /// Where the next frame from the TAP is to be read.
    pub fn rx_buffer(&mut self) -> &mut [u8] {
        &mut self.rx
    }

    /// Marks the first `len` bytes of the receive buffer as a frame for the stack.
    pub fn set_received(&mut self, len: usize) {
        self.rx_len = Some(len.min(self.rx.len()));
    }

    /// The frame most recently marked received, if the stack has not consumed it yet.
    pub fn received(&self) -> Option<&[u8]> {
        self.rx_len.map(|len| &self.rx[..len])
    }

    /// Drops the received frame without giving it to smoltcp.
    pub fn discard_received(&mut self) {
        self.rx_len = None;
    }

    /// Queues a reply built by `fill` from the received frame (first argument) into a new
    /// frame of `len` bytes (second). `None` when no frame is held.
    pub fn emit_reply<R>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&[u8], &mut [u8]) -> R,
    ) -> Option<R> {
        let rx = &self.rx[..self.rx_len?];
        Some(self.tx.push_with(len, |out| fill(rx, out)))
    }

    /// Queues a frame of up to `max_len` bytes built by `fill`, which returns the length it
    /// used (or `None` to queue nothing). Lets a host socket read straight into a frame.
    pub fn emit_sized(
        &mut self,
        max_len: usize,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        let mut buf = self.tx.free.pop().unwrap_or_default();
        if buf.len() < max_len {
            buf.resize(max_len, 0);
        }
        match fill(&mut buf[..max_len]) {
            Some(len) if len <= max_len => {
                self.tx.ready.push_back((buf, len));
                Some(len)
            }
            _ => {
                self.tx.free.push(buf);
                None
            }
        }
    }

    /// Whether the queue to the TAP has room for another frame.
    pub fn has_tx_room(&self) -> bool {
        self.tx.ready.len() < TX_QUEUE_LIMIT
    }

    pub fn frame_mtu(&self) -> usize {
        self.frame_mtu
    }

    /// Queues a frame of `len` bytes built by `fill` (one the stack originates, not a reply).
    /// `None`, and nothing queued, when the queue is full.
    pub fn emit<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if self.tx.ready.len() >= TX_QUEUE_LIMIT {
            return None;
        }
        Some(self.tx.push_with(len, fill))
    }

    /// The oldest frame waiting for the TAP.
    pub fn front_tx(&self) -> Option<&[u8]> {
        self.tx.ready.front().map(|(buf, len)| &buf[..*len])
    }

    /// Removes the oldest waiting frame (after it was written), keeping its buffer.
    pub fn pop_tx(&mut self) {
        if let Some((buf, _)) = self.tx.ready.pop_front()
            && self.tx.free.len() < TX_FREE_LIMIT
        {
            self.tx.free.push(buf);
        }
    }

    pub fn tx_pending(&self) -> usize {
        self.tx.ready.len()
    }

    /// The frames queued after the first `count` (those a poll just added).
    pub fn frames_since(&self, count: usize) -> impl Iterator<Item = &[u8]> {
        self.tx
            .ready
            .range(count.min(self.tx.ready.len())..)
            .map(|(buf, len)| &buf[..*len])
    }
}

pub struct RxToken<'a>(&'a [u8]);

pub struct TxToken<'a>(&'a mut TxQueue);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.push_with(len, f)
    }
}

impl phy::Device for FrameDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let len = self.rx_len.take()?;
        Some((RxToken(&self.rx[..len]), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        (self.tx.ready.len() < TX_QUEUE_LIMIT).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_mtu;
        // The guest kernel checksums what it sends to a TAP without offload; checking again
        // here catches corruption and hostile frames. Both directions stay on.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Both;
        checksum.tcp = Checksum::Both;
        caps.checksum = checksum;
        caps
    }
}
