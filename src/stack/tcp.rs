//! The guest side of one TCP flow: a smoltcp socket in a socket set of its own.
//!
//! A set per flow is what lets the stack poll only the flow a frame belongs to. The socket
//! starts listening on the exact address and port the guest dialled, with its SYN-ACK
//! paused: the guest's connection is only accepted once the host side has connected
//! ([`GuestSocket::accept`]), and refused with an RST otherwise ([`GuestSocket::refuse`]).
//! Nagle and delayed ACKs are off: the guest and the host each run their own congestion
//! control, and we only relay.

use smoltcp::iface::{Context, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Duration;
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};

use super::FlowKey;
use super::segments::SegmentStats;

/// Receive and send buffer of each guest TCP socket. The receive buffer bounds what a slow
/// host peer can make us hold for it, the send buffer what a slow guest can; the window
/// smoltcp advertises is derived from the receive buffer. Large enough for a
/// bandwidth-delay product on a local link at 65520 MTU (8 full segments).
pub const GUEST_TCP_BUFFER: usize = 512 * 1024;

/// How long a forwarded connection may wait for the guest to answer its SYN (and, once open,
/// for the guest to acknowledge anything while data is outstanding) before it is reset: the
/// BSD connection-establishment timer that libslirp also uses.
pub const GUEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(75);

pub struct GuestSocket {
    set: SocketSet<'static>,
    handle: SocketHandle,
    /// What crossed the TAP for this socket (kept by the stack).
    pub wire: SegmentStats,
}

impl GuestSocket {
    pub(super) fn listen(key: FlowKey) -> Self {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; GUEST_TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; GUEST_TCP_BUFFER]),
        );
        socket.set_ack_delay(None);
        socket.set_nagle_enabled(false);
        socket.pause_synack(true);
        let endpoint = IpListenEndpoint {
            addr: Some(key.remote.ip().into()),
            port: key.remote.port(),
        };
        // Port 0 is the only thing `listen` rejects; a SYN to port 0 then finds no socket
        // and smoltcp answers it with an RST.
        let _ = socket.listen(endpoint);
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        GuestSocket {
            set,
            handle,
            wire: SegmentStats::default(),
        }
    }

    /// A socket that dials the guest endpoint `key.guest` from `key.remote` (a port forward).
    pub(super) fn connect(cx: &mut Context, key: FlowKey) -> Option<Self> {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; GUEST_TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; GUEST_TCP_BUFFER]),
        );
        socket.set_ack_delay(None);
        socket.set_nagle_enabled(false);
        socket.set_timeout(Some(GUEST_CONNECT_TIMEOUT));
        let remote = IpEndpoint::new(key.guest.ip().into(), key.guest.port());
        let local = IpListenEndpoint {
            addr: Some(key.remote.ip().into()),
            port: key.remote.port(),
        };
        socket.connect(cx, remote, local).ok()?;
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        Some(GuestSocket {
            set,
            handle,
            wire: SegmentStats::default(),
        })
    }

    pub fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut(self.handle)
    }

    /// Bytes received from the guest and not yet taken, and bytes sent to it and not yet
    /// acknowledged (or not yet sent).
    pub fn queued(&self) -> (usize, usize) {
        let socket = self.set.get::<tcp::Socket>(self.handle);
        (socket.recv_queue(), socket.send_queue())
    }

    pub fn state(&self) -> tcp::State {
        self.set.get::<tcp::Socket>(self.handle).state()
    }

    /// Lets the SYN-ACK go out: the host side is connected.
    pub fn accept(&mut self) {
        self.socket().pause_synack(false);
    }

    /// Refuses the guest's connection: the next poll sends an RST.
    pub fn refuse(&mut self) {
        self.socket().abort();
    }

    pub(super) fn set(&self) -> &SocketSet<'static> {
        &self.set
    }

    pub(super) fn set_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.set
    }
}
