//! The guest-facing TCP/IP stack: smoltcp plus the decisions smoltcp cannot make for us.
//!
//! Sans-IO: frames come in through [`FrameDevice`], time is a parameter, and frames to send
//! wait in the device's queue. Nothing here opens a socket or reads a clock.
//!
//! Theory of operation. smoltcp's interface runs in "any IP" mode with a default route via
//! our own gateway address, so it accepts traffic for every destination, which is what a
//! NAT needs. But `Interface::poll` walks every socket it is given, so instead of one big
//! socket set we demultiplex first: [`Stack::classify`] reads the 5-tuple of each frame and
//! the caller hands `poll` only the one-socket set of that flow (see `flow/`). The cost per
//! frame therefore does not grow with the number of flows. Frames that belong to no flow go
//! to smoltcp with an empty set, which answers ARP for our addresses and resets stray TCP.
//!
//! smoltcp would also answer ARP and ping for *every* address in any-IP mode; a guest that
//! probes for a free address (DHCP clients do) must not get an answer for an address that
//! nobody holds. So ARP is filtered to N+2 and N+3, and echo replies for those two are made
//! here (module `icmp`), not by smoltcp.

mod device;
mod icmp;
mod inbound;
mod tcp;

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpCidr,
    IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};

pub use device::{ETHERNET_HEADER_LEN, FrameDevice};
pub use inbound::{MAX_NEIGHBORS, MAX_PENDING_UDP, UdpSend};
pub use tcp::{GUEST_CONNECT_TIMEOUT, GuestSocket};

use crate::config::NetConfig;
use crate::stats::{Counters, DropReason};

/// One TCP connection between the guest and a remote endpoint, as the guest addresses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub guest: SocketAddrV4,
    pub remote: SocketAddrV4,
}

/// What the caller must do with the frame just received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// A TCP segment of flow `key`; `opens` when it is a bare SYN (a new connection).
    /// The frame stays in the device until [`Stack::deliver`].
    Tcp { key: FlowKey, opens: bool },
    /// A whole (unfragmented) UDP datagram from `src` in the guest to `dst`, checksum
    /// verified; its payload is [`Stack::received_udp_payload`]. The frame stays in the
    /// device: [`Stack::discard_received`] once consumed, or [`Stack::deliver`] it with no
    /// sockets to have it refused (ICMP port unreachable).
    Udp {
        src: SocketAddrV4,
        dst: SocketAddrV4,
    },
    /// The stack dealt with the frame itself (ARP, ping to the gateway, a refusal).
    Handled,
    /// The frame was dropped and counted.
    Dropped(DropReason),
}

/// The guest-facing stack of one tapsplice instance.
pub struct Stack {
    cfg: NetConfig,
    iface: Interface,
    device: FrameDevice,
    /// The socket set for frames that belong to no flow.
    no_sockets: SocketSet<'static>,
    pub counters: Counters,
    /// Guest MACs and datagrams for port forwards (module `inbound`).
    inbound: inbound::Inbound,
}

impl Stack {
    pub fn new(cfg: NetConfig, now: Instant) -> Self {
        let mut device = FrameDevice::new(cfg.mtu);
        let mac = EthernetAddress(cfg.gateway_mac());
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = random_seed();
        let mut iface = Interface::new(config, &mut device, now);
        iface.update_ip_addrs(|addrs| {
            for own in [cfg.gateway(), cfg.dns()] {
                // Capacity is SMOLTCP_IFACE_MAX_ADDR_COUNT (4, .cargo/config.toml).
                let _ = addrs.push(IpCidr::new(own.into(), cfg.prefix_len));
            }
        });
        iface.set_any_ip(true);
        // The route's gateway must be one of our own addresses for any-IP to accept a
        // destination; ours is N+2.
        let _ = iface.routes_mut().add_default_ipv4_route(cfg.gateway());
        Stack {
            cfg,
            iface,
            device,
            no_sockets: SocketSet::new(Vec::new()),
            counters: Counters::default(),
            inbound: inbound::Inbound::default(),
        }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Where the event loop reads the next frame from the TAP.
    pub fn rx_buffer(&mut self) -> &mut [u8] {
        self.device.rx_buffer()
    }

    /// Looks at the frame the event loop just read (`len` bytes of [`Stack::rx_buffer`]) and
    /// says whose it is. ARP and pings for our own addresses are answered here.
    pub fn classify(&mut self, now: Instant, len: usize) -> Ingress {
        self.device.set_received(len);
        self.counters.frame_in(len);
        let verdict = self.classify_received(now);
        if let Ingress::Dropped(reason) = verdict {
            self.device.discard_received();
            self.counters.drop(reason);
        }
        verdict
    }

    fn classify_received(&mut self, now: Instant) -> Ingress {
        let Some(frame) = self.device.received() else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => self.classify_arp(now),
            EthernetProtocol::Ipv4 => self.classify_ipv4(now),
            _ => Ingress::Dropped(DropReason::Unsupported),
        }
    }

    fn classify_arp(&mut self, now: Instant) -> Ingress {
        let frame = self.device.received().unwrap_or_default();
        let payload = &frame[ETHERNET_HEADER_LEN.min(frame.len())..];
        let Ok(repr) = ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        let ArpRepr::EthernetIpv4 {
            target_protocol_addr,
            source_protocol_addr,
            source_hardware_addr,
            ..
        } = repr
        else {
            return Ingress::Dropped(DropReason::Unsupported);
        };
        self.learn_neighbor(source_protocol_addr, source_hardware_addr);
        if !self.cfg.is_own_address(target_protocol_addr) {
            return Ingress::Dropped(DropReason::NotOurs);
        }
        self.deliver(now, None);
        Ingress::Handled
    }

    fn classify_ipv4(&mut self, now: Instant) -> Ingress {
        let frame = self.device.received().unwrap_or_default();
        let Ok(ip) = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]) else {
            return Ingress::Dropped(DropReason::Malformed);
        };
        if !ip.verify_checksum() {
            return Ingress::Dropped(DropReason::BadChecksum);
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        match ip.next_header() {
            IpProtocol::Tcp => {
                let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                    return Ingress::Dropped(DropReason::Malformed);
                };
                let key = FlowKey {
                    guest: SocketAddrV4::new(src, tcp.src_port()),
                    remote: SocketAddrV4::new(dst, tcp.dst_port()),
                };
                let opens = tcp.syn() && !tcp.ack() && !tcp.rst();
                if !opens {
                    // A SYN-ACK answers a forwarded connection: its sender is a guest address.
                    if tcp.syn() {
                        self.learn_from_received_ipv4();
                    }
                    return Ingress::Tcp { key, opens };
                }
                // A SYN makes a host connection, so check it whole before believing it.
                if !tcp.verify_checksum(&src.into(), &dst.into()) {
                    return Ingress::Dropped(DropReason::BadChecksum);
                }
                self.learn_from_received_ipv4();
                if dst == self.cfg.gateway() && self.cfg.disable_host_loopback {
                    // What slirp4netns clients see: connect() fails at once, ENETUNREACH.
                    icmp::reply_net_unreachable(&mut self.device, &self.cfg);
                    self.device.discard_received();
                    self.counters.refused_host_loopback += 1;
                    return Ingress::Handled;
                }
                Ingress::Tcp { key, opens }
            }
            IpProtocol::Icmp if self.cfg.is_own_address(dst) => {
                if icmp::reply_echo(&mut self.device, &self.cfg) {
                    self.device.discard_received();
                    Ingress::Handled
                } else {
                    Ingress::Dropped(DropReason::Unsupported)
                }
            }
            IpProtocol::Icmp => Ingress::Dropped(DropReason::Unsupported),
            IpProtocol::Udp if !ip.more_frags() && ip.frag_offset() == 0 => {
                let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                    return Ingress::Dropped(DropReason::Malformed);
                };
                if !udp.verify_checksum(&src.into(), &dst.into()) {
                    return Ingress::Dropped(DropReason::BadChecksum);
                }
                let (src_port, dst_port) = (udp.src_port(), udp.dst_port());
                self.learn_from_received_ipv4();
                Ingress::Udp {
                    src: SocketAddrV4::new(src, src_port),
                    dst: SocketAddrV4::new(dst, dst_port),
                }
            }
            _ => {
                // smoltcp answers "protocol unreachable", so the guest fails fast.
                self.deliver(now, None);
                Ingress::Handled
            }
        }
    }

    /// Gives the received frame to smoltcp together with the socket set of its flow (or no
    /// sockets at all), and lets the flow's sockets send what they have.
    pub fn deliver(&mut self, now: Instant, flow: Option<&mut GuestSocket>) {
        let set = match flow {
            Some(guest) => guest.set_mut(),
            None => &mut self.no_sockets,
        };
        self.iface.poll(now, &mut self.device, set);
    }

    /// Gives the received frame to the flow's socket without letting it answer yet: ACKs
    /// and window updates wait for [`Stack::poll_flow`], which the caller runs once per
    /// batch of frames, so a burst of segments costs one ACK and one host write.
    pub fn deliver_batched(&mut self, now: Instant, guest: &mut GuestSocket) {
        self.iface
            .poll_ingress_single(now, &mut self.device, guest.set_mut());
    }

    /// Lets the sockets of one flow send what they have (data, ACKs, window updates, FIN).
    pub fn poll_flow(&mut self, now: Instant, guest: &mut GuestSocket) {
        self.iface.poll(now, &mut self.device, guest.set_mut());
    }

    /// When the flow's sockets next need [`Stack::poll_flow`] for a timer (retransmission,
    /// delayed close), if ever.
    pub fn poll_at(&mut self, now: Instant, guest: &GuestSocket) -> Option<Instant> {
        self.iface.poll_at(now, guest.set())
    }

    /// A socket that takes over the guest's connection attempt `key`. Its SYN-ACK is held
    /// back until [`GuestSocket::accept`].
    pub fn open_guest_socket(&self, key: FlowKey) -> GuestSocket {
        GuestSocket::listen(key)
    }

    /// The oldest frame waiting to be written to the TAP.
    pub fn next_tx(&self) -> Option<&[u8]> {
        self.device.front_tx()
    }

    /// Marks the frame from [`Stack::next_tx`] as written.
    pub fn tx_done(&mut self) {
        if let Some(len) = self.device.front_tx().map(<[u8]>::len) {
            self.counters.frame_out(len);
        }
        self.device.pop_tx();
    }

    pub fn tx_pending(&self) -> usize {
        self.device.tx_pending()
    }
}

/// The host the guest means when it connects to `remote`: N+2 is the host's loopback.
/// `None` for destinations tapsplice serves itself but does not carry over TCP yet (DNS).
pub fn host_destination(cfg: &NetConfig, remote: SocketAddrV4) -> Option<SocketAddrV4> {
    let ip = *remote.ip();
    if ip == cfg.gateway() {
        Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, remote.port()))
    } else if ip == cfg.dns() {
        None
    } else {
        Some(remote)
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod inbound_tests;
