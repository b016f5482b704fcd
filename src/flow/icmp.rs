//! ICMP echo ("ping") from the guest to remote hosts, one host ICMP socket per guest
//! identifier and destination.
//!
//! Unprivileged ping sockets (`net.ipv4.ping_group_range`) are tried first; the kernel then
//! chooses the identifier on the wire and hands back only our replies, so the guest's
//! identifier is put back on the way in. As root, a raw socket works too; it keeps the
//! guest's identifier and sees every echo reply from the destination, so replies are matched
//! by identifier. When neither is allowed, the table says so once and drops echo requests
//! to remote hosts (N+2 and N+3 still answer: the stack does that itself).

use std::io;

use mio::net::UdpSocket;
use smoltcp::time::Instant;
use std::net::IpAddr;

use smoltcp::wire::{Icmpv4Message, Icmpv4Packet, Icmpv6Message, Icmpv6Packet, Ipv4Packet};

use super::nat::PingSocket;
use crate::stack::{EchoRequest, Stack};
use crate::stats::{DropReason, Traffic};
use crate::sys::socket::recv_datagram;

/// Size of the scratch buffer the table lends for echo messages: the largest IP datagram.
pub const SCRATCH_LEN: usize = 65_536;

/// Guest address, destination, guest identifier.
pub type EchoKey = (IpAddr, IpAddr, u16);

pub struct EchoFlow {
    pub key: EchoKey,
    pub(super) host: UdpSocket,
    kind: PingSocket,
    pub last_active: Instant,
    pub deadline: Option<Instant>,
    pub opened: Instant,
    /// Echo requests and their data bytes.
    pub to_host: Traffic,
    /// Echo replies and their data bytes.
    pub to_guest: Traffic,
}

impl EchoFlow {
    pub fn new(key: EchoKey, host: UdpSocket, kind: PingSocket, now: Instant) -> Self {
        EchoFlow {
            key,
            host,
            kind,
            last_active: now,
            deadline: None,
            opened: now,
            to_host: Traffic::default(),
            to_guest: Traffic::default(),
        }
    }

    /// Sends the guest's echo request (identifier, sequence number, data) to the host side.
    pub fn send_to_host(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        request: EchoRequest,
        scratch: &mut [u8],
    ) {
        self.last_active = now;
        let data = stack.received_payload();
        let Some(message) = scratch.get_mut(..8 + data.len()) else {
            stack.consume_received();
            return;
        };
        if request.remote.is_ipv6() {
            // The kernel computes ICMPv6 checksums for both socket kinds.
            let mut packet = Icmpv6Packet::new_unchecked(&mut *message);
            packet.set_msg_type(Icmpv6Message::EchoRequest);
            packet.set_msg_code(0);
            packet.set_echo_ident(request.ident);
            packet.set_echo_seq_no(request.seq_no);
            packet.payload_mut().copy_from_slice(data);
        } else {
            let mut packet = Icmpv4Packet::new_unchecked(&mut *message);
            packet.set_msg_type(Icmpv4Message::EchoRequest);
            packet.set_msg_code(0);
            packet.set_echo_ident(request.ident);
            packet.set_echo_seq_no(request.seq_no);
            packet.data_mut().copy_from_slice(data);
            // A ping socket rewrites the identifier and checksum; a raw socket sends it as is.
            packet.fill_checksum();
        }
        match self.host.send(message) {
            Ok(_) => self.to_host.add(data.len()),
            Err(e) => {
                stack.counters.drop(DropReason::BufferFull);
                tracing::debug!(remote = %request.remote, error = %e, "echo request dropped");
            }
        }
        stack.consume_received();
    }

    /// Passes echo replies from the host socket to the guest.
    pub fn deliver_to_guest(&mut self, now: Instant, stack: &mut Stack, buf: &mut [u8]) {
        // mio is edge-triggered: read until the socket would block, or what is left in it
        // waits for the next datagram to arrive.
        loop {
            let len = match recv_datagram(&self.host, buf) {
                Ok(len) if len <= buf.len() => len,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let (guest, remote, ident) = self.key;
            let Some((reply_ident, seq_no, data_at)) =
                echo_reply_fields(&buf[..len], self.kind, remote)
            else {
                continue;
            };
            if self.kind == PingSocket::Raw && reply_ident != ident {
                continue;
            }
            self.last_active = now;
            let data = &buf[data_at..len];
            let request = EchoRequest {
                guest,
                remote,
                ident,
                seq_no,
            };
            let sent = stack.send_echo_reply(request, |out| {
                let out = out.get_mut(..data.len())?;
                out.copy_from_slice(data);
                Some(data.len())
            });
            if sent.is_some() {
                self.to_guest.add(data.len());
            }
        }
    }
}

/// Identifier, sequence number and where the data starts, if `message` (as received on a
/// socket of `kind` for `remote`'s family) is an echo reply.
fn echo_reply_fields(
    message: &[u8],
    kind: PingSocket,
    remote: IpAddr,
) -> Option<(u16, u16, usize)> {
    if remote.is_ipv6() {
        // IPv6 sockets never deliver the IP header.
        let packet = Icmpv6Packet::new_checked(message).ok()?;
        (packet.msg_type() == Icmpv6Message::EchoReply)
            .then(|| (packet.echo_ident(), packet.echo_seq_no(), 8))
    } else {
        // An IPv4 raw socket delivers the IP header too.
        let at = match kind {
            PingSocket::Unprivileged => 0,
            PingSocket::Raw => usize::from(Ipv4Packet::new_checked(message).ok()?.header_len()),
        };
        let packet = Icmpv4Packet::new_checked(message.get(at..)?).ok()?;
        (packet.msg_type() == Icmpv4Message::EchoReply)
            .then(|| (packet.echo_ident(), packet.echo_seq_no(), at + 8))
    }
}
