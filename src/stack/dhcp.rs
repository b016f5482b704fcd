//! A DHCPv4 server for the guest, as libslirp has: addresses N+15..N+30, router N+2, DNS N+3.
//!
//! Leases are kept per client MAC in a fixed table the size of the pool, so a guest that
//! asks again gets the same address, and the table cannot grow. Messages are parsed and
//! written by smoltcp's `DhcpRepr`; replies go to the client's MAC, to its new address (or
//! broadcast when it asks for that, as clients without an address yet often do).

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame, Ipv4Packet,
    UdpPacket,
};

use super::device::FrameDevice;
use super::emit::{self, Link};
use crate::config::NetConfig;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// First address of the pool, as an offset from the network address (libslirp's).
const POOL_START: u32 = 15;
/// Addresses in the pool: N+15..=N+30.
const POOL_SIZE: usize = 16;
/// Lease time offered, in seconds (libslirp's).
const LEASE_SECS: u32 = 86_400;
/// DHCP option 6: domain name servers.
const OPT_DNS: u8 = 6;
/// DHCP option 26: interface MTU.
const OPT_MTU: u8 = 26;

#[derive(Default)]
pub struct DhcpServer {
    /// The client MAC holding each pool address.
    leases: [Option<EthernetAddress>; POOL_SIZE],
}

impl DhcpServer {
    fn address(cfg: &NetConfig, slot: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(cfg.network) + POOL_START + slot as u32)
    }

    fn slot_of(cfg: &NetConfig, addr: Ipv4Addr) -> Option<usize> {
        let offset = u32::from(addr).checked_sub(u32::from(cfg.network) + POOL_START)? as usize;
        (offset < POOL_SIZE).then_some(offset)
    }

    /// The slot leased to `mac`, or a free one.
    fn slot_for(&self, mac: EthernetAddress) -> Option<usize> {
        self.leases
            .iter()
            .position(|l| *l == Some(mac))
            .or_else(|| self.leases.iter().position(Option::is_none))
    }

    /// Answers the DHCP message held in `device`. Returns false if it is not a valid one.
    pub fn handle(&mut self, device: &mut FrameDevice, cfg: &NetConfig) -> bool {
        let Some(frame) = device.received() else {
            return false;
        };
        let Some(request) = parse(frame) else {
            return false;
        };
        let mac = request.client_hardware_address;
        let (kind, yiaddr) = match request.message_type {
            DhcpMessageType::Discover => match self.slot_for(mac) {
                Some(slot) => (DhcpMessageType::Offer, Self::address(cfg, slot)),
                None => return true, // pool exhausted: stay silent, as a full server does
            },
            DhcpMessageType::Request => {
                if request
                    .server_identifier
                    .is_some_and(|id| id != cfg.gateway())
                {
                    return true; // the client chose another server
                }
                let wanted = request.requested_ip.unwrap_or(request.client_ip);
                match Self::slot_of(cfg, wanted) {
                    Some(slot) if self.leases[slot].is_none_or(|m| m == mac) => {
                        if let Some(old) = self.leases.iter().position(|l| *l == Some(mac)) {
                            self.leases[old] = None;
                        }
                        self.leases[slot] = Some(mac);
                        (DhcpMessageType::Ack, wanted)
                    }
                    _ => (DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED),
                }
            }
            DhcpMessageType::Release => {
                if let Some(slot) = Self::slot_of(cfg, request.client_ip)
                    && self.leases[slot] == Some(mac)
                {
                    self.leases[slot] = None;
                }
                return true;
            }
            DhcpMessageType::Inform => (DhcpMessageType::Ack, Ipv4Addr::UNSPECIFIED),
            _ => return true,
        };
        let dns = cfg.dns().octets();
        let mtu = (cfg.mtu as u16).to_be_bytes();
        let options = [
            DhcpOption {
                kind: OPT_DNS,
                data: &dns,
            },
            DhcpOption {
                kind: OPT_MTU,
                data: &mtu,
            },
        ];
        let nak = kind == DhcpMessageType::Nak;
        let reply = DhcpRepr {
            message_type: kind,
            transaction_id: request.transaction_id,
            secs: 0,
            client_hardware_address: mac,
            client_ip: if request.message_type == DhcpMessageType::Inform {
                request.client_ip
            } else {
                Ipv4Addr::UNSPECIFIED
            },
            your_ip: yiaddr,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: (!nak).then(|| cfg.gateway()),
            subnet_mask: (!nak).then(|| cfg.netmask()),
            relay_agent_ip: request.relay_agent_ip,
            broadcast: request.broadcast,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(cfg.gateway()),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: (!nak && yiaddr != Ipv4Addr::UNSPECIFIED).then_some(LEASE_SECS),
            renew_duration: None,
            rebind_duration: None,
            additional_options: if nak { &[] } else { &options },
        };
        let to_broadcast = nak || request.broadcast || yiaddr.is_unspecified();
        let (dst_ip, dst_mac) = if to_broadcast {
            (Ipv4Addr::BROADCAST, EthernetAddress::BROADCAST)
        } else {
            (yiaddr, mac)
        };
        let link = Link {
            src: EthernetAddress(cfg.gateway_mac()),
            dst: dst_mac,
        };
        emit::udp(
            device,
            link,
            SocketAddrV4::new(cfg.gateway(), SERVER_PORT).into(),
            SocketAddrV4::new(dst_ip, CLIENT_PORT).into(),
            |buf| {
                let len = reply.buffer_len();
                let mut packet = DhcpPacket::new_unchecked(buf.get_mut(..len)?);
                reply.emit(&mut packet).ok()?;
                Some(len)
            },
        );
        true
    }
}

/// The fields of a client message the server acts on, copied out of the frame.
#[derive(Debug, Clone, Copy)]
struct Request {
    message_type: DhcpMessageType,
    transaction_id: u32,
    client_hardware_address: EthernetAddress,
    client_ip: Ipv4Addr,
    requested_ip: Option<Ipv4Addr>,
    server_identifier: Option<Ipv4Addr>,
    relay_agent_ip: Ipv4Addr,
    broadcast: bool,
}

fn parse(frame: &[u8]) -> Option<Request> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    let packet = DhcpPacket::new_checked(udp.payload()).ok()?;
    let repr = DhcpRepr::parse(&packet).ok()?;
    Some(Request {
        message_type: repr.message_type,
        transaction_id: repr.transaction_id,
        client_hardware_address: repr.client_hardware_address,
        client_ip: repr.client_ip,
        requested_ip: repr.requested_ip,
        server_identifier: repr.server_identifier,
        relay_agent_ip: repr.relay_agent_ip,
        broadcast: repr.broadcast,
    })
}
