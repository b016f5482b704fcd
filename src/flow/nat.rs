//! The host side of the NAT: which host address a guest destination means, and the host
//! sockets that reach it.
//!
//! N+2 (fd00::2) is the host's loopback (127.0.0.1, ::1), N+3 (fd00::3) port 53 the DNS
//! upstream; every other address is itself. Host sockets are bound to `--outbound-addr` / `--outbound-addr6` when given,
//! except towards loopback, which only a loopback source can reach.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::resolver::Resolver;
use crate::config::NetConfig;
use crate::stack::DNS_PORT;

/// Receive buffer asked for on host UDP sockets.
const UDP_RECV_BUFFER: usize = 1 << 20;

pub struct Nat {
    cfg: NetConfig,
    resolver: Resolver,
}

/// How ICMP echo reaches remote hosts from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingSocket {
    /// `SOCK_DGRAM` + `IPPROTO_ICMP`: allowed by `net.ipv4.ping_group_range`; the kernel
    /// picks the echo identifier.
    Unprivileged,
    /// `SOCK_RAW`: needs `CAP_NET_RAW`; the guest's identifier is kept.
    Raw,
}

impl Nat {
    pub fn new(cfg: NetConfig) -> Self {
        let resolver = Resolver::new(cfg.resolv_conf.clone(), cfg.dns_upstream);
        Nat { cfg, resolver }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// The host address a guest connection or datagram to `remote` goes to; `None` when
    /// nothing on the host serves it (the caller refuses it).
    pub fn destination(&mut self, remote: SocketAddr) -> Option<SocketAddr> {
        let ip = remote.ip();
        if self.cfg.is_gateway(ip) {
            let loopback = match ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            Some(SocketAddr::new(loopback, remote.port()))
        } else if self.cfg.is_dns(ip) {
            (remote.port() == DNS_PORT)
                .then(|| self.resolver.upstream())
                .flatten()
        } else {
            Some(remote)
        }
    }

    /// The source address host sockets towards `dest` are bound to, if any.
    fn source_for(&self, dest: &SocketAddr) -> Option<SocketAddr> {
        if dest.ip().is_loopback() {
            return None;
        }
        match dest {
            SocketAddr::V4(_) => self
                .cfg
                .outbound_addr
                .map(|a| SocketAddr::new(IpAddr::V4(a), 0)),
            SocketAddr::V6(_) => self
                .cfg
                .outbound_addr6
                .map(|a| SocketAddr::new(IpAddr::V6(a), 0)),
        }
    }

    fn socket(&self, dest: &SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
        let socket = Socket::new(
            Domain::for_address(*dest),
            ty.nonblocking().cloexec(),
            Some(protocol),
        )?;
        if let Some(source) = self.source_for(dest) {
            socket.bind(&SockAddr::from(source))?;
        }
        Ok(socket)
    }

    /// Starts a non-blocking TCP connect to `dest`.
    pub fn connect_tcp(&self, dest: SocketAddr) -> io::Result<mio::net::TcpStream> {
        let socket = self.socket(&dest, Type::STREAM, Protocol::TCP)?;
        socket.set_tcp_nodelay(true)?;
        match socket.connect(&SockAddr::from(dest)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(mio::net::TcpStream::from_std(socket.into()))
    }

    /// A UDP socket connected to `dest`, so only its replies (and ICMP errors) arrive on it.
    pub fn connect_udp(&self, dest: SocketAddr) -> io::Result<mio::net::UdpSocket> {
        let socket = self.socket(&dest, Type::DGRAM, Protocol::UDP)?;
        // Replies arrive in bursts while the loop is busy with the guest's side; the kernel
        // caps this at net.core.rmem_max, so it only helps where that allows it.
        let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
        socket.connect(&SockAddr::from(dest))?;
        Ok(mio::net::UdpSocket::from_std(socket.into()))
    }

    /// An ICMP (or ICMPv6) socket connected to `dest`, of the kind given.
    pub fn connect_ping(&self, dest: IpAddr, kind: PingSocket) -> io::Result<mio::net::UdpSocket> {
        let protocol = match dest {
            IpAddr::V4(_) => Protocol::ICMPV4,
            IpAddr::V6(_) => Protocol::ICMPV6,
        };
        let dest = SocketAddr::new(dest, 0);
        let ty = match kind {
            PingSocket::Unprivileged => Type::DGRAM,
            PingSocket::Raw => Type::RAW,
        };
        let socket = self.socket(&dest, ty, protocol)?;
        socket.connect(&SockAddr::from(dest))?;
        Ok(mio::net::UdpSocket::from_std(socket.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat(cfg: NetConfig) -> Nat {
        Nat::new(cfg)
    }

    #[test]
    fn gateway_is_host_loopback_and_others_are_themselves() {
        let mut nat = nat(NetConfig::default());
        assert_eq!(
            nat.destination("10.0.2.2:8080".parse().unwrap()),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            nat.destination("192.0.2.1:443".parse().unwrap()),
            Some("192.0.2.1:443".parse().unwrap())
        );
    }

    #[test]
    fn dns_address_serves_only_port_53_and_relays_upstream() {
        let mut nat = nat(NetConfig {
            dns_upstream: Some("127.0.0.53:5353".parse().unwrap()),
            ..NetConfig::default()
        });
        assert_eq!(
            nat.destination("10.0.2.3:53".parse().unwrap()),
            Some("127.0.0.53:5353".parse().unwrap())
        );
        assert_eq!(nat.destination("10.0.2.3:80".parse().unwrap()), None);
    }

    #[test]
    fn outbound_address_is_not_used_towards_loopback() {
        let nat = nat(NetConfig {
            outbound_addr: Some(Ipv4Addr::new(192, 0, 2, 10)),
            ..NetConfig::default()
        });
        assert_eq!(nat.source_for(&"127.0.0.1:80".parse().unwrap()), None);
        assert_eq!(
            nat.source_for(&"198.51.100.1:80".parse().unwrap()),
            Some("192.0.2.10:0".parse().unwrap())
        );
    }
}
