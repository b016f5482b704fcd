//! Interface configuration inside the container's namespace, by the classic `SIOCSIF*` and
//! `SIOCADDRT` ioctls: link up, MTU, MAC, IPv4 address and netmask, default route.
//!
//! This is what `slirp4netns --configure` does, and it needs no `ip` binary inside the
//! container. The ioctls act on the network namespace of the socket they are issued on, so
//! the caller creates the control socket while inside the target namespace.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use super::{Result, SysError};

/// A `struct ifreq` for one interface name, built field by field.
pub struct IfReq(libc::ifreq);

impl IfReq {
    /// A zeroed request naming `name`; names longer than `IFNAMSIZ - 1` are rejected.
    pub fn new(name: &str) -> Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(SysError::Helper(format!("invalid interface name {name:?}")));
        }
        // SAFETY: `ifreq` is a plain C struct (arrays, integers, a union of those and one
        // pointer); all-zero bytes are a valid value of every field.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        Ok(IfReq(req))
    }

    pub fn set_flags(&mut self, flags: libc::c_short) {
        self.0.ifr_ifru.ifru_flags = flags;
    }

    fn flags(&self) -> libc::c_short {
        // SAFETY: the union was zeroed at construction and SIOCGIFFLAGS fills `ifru_flags`;
        // reading a `c_short` out of initialised bytes is always valid.
        unsafe { self.0.ifr_ifru.ifru_flags }
    }

    fn set_mtu(&mut self, mtu: u32) {
        self.0.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    }

    fn set_ipv4(&mut self, addr: Ipv4Addr) {
        self.0.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    }

    fn set_hwaddr(&mut self, mac: [u8; 6]) {
        // SAFETY: `sockaddr` is plain integers and bytes; all-zero is valid.
        let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
        sa.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in sa.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
        self.0.ifr_ifru.ifru_hwaddr = sa;
    }

    pub fn as_mut_ptr(&mut self) -> *mut libc::ifreq {
        &mut self.0
    }
}

fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` have the same size (16 bytes) on Linux and both
    // are plain bytes; this is the reinterpretation the socket ioctls expect.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// A control socket for interface ioctls in the namespace the caller is in now.
pub struct IfControl {
    sock: OwnedFd,
}

impl IfControl {
    pub fn new() -> Result<Self> {
        let sock = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| SysError::errno("create control socket", e))?;
        Ok(IfControl { sock })
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut IfReq, what: &str) -> Result<()> {
        // SAFETY: every request passed here takes a `struct ifreq *`, which `req` provides
        // and which outlives the call; the socket is a valid AF_INET socket.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), request, req.as_mut_ptr()) };
        if rc < 0 {
            return Err(SysError::io(
                what.to_string(),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Sets `IFF_UP` on `name`, keeping its other flags.
    pub fn link_up(&self, name: &str) -> Result<()> {
        let mut req = IfReq::new(name)?;
        self.ioctl(
            libc::SIOCGIFFLAGS,
            &mut req,
            &format!("get flags of {name}"),
        )?;
        let flags = req.flags() | libc::IFF_UP as libc::c_short;
        req.set_flags(flags);
        self.ioctl(libc::SIOCSIFFLAGS, &mut req, &format!("bring up {name}"))
    }

    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        let mut req = IfReq::new(name)?;
        req.set_mtu(mtu);
        self.ioctl(
            libc::SIOCSIFMTU,
            &mut req,
            &format!("set MTU {mtu} on {name}"),
        )
    }

    pub fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<()> {
        let mut req = IfReq::new(name)?;
        req.set_hwaddr(mac);
        self.ioctl(libc::SIOCSIFHWADDR, &mut req, &format!("set MAC on {name}"))
    }

    pub fn set_ipv4(&self, name: &str, addr: Ipv4Addr, netmask: Ipv4Addr) -> Result<()> {
        let mut req = IfReq::new(name)?;
        req.set_ipv4(addr);
        self.ioctl(
            libc::SIOCSIFADDR,
            &mut req,
            &format!("set address {addr} on {name}"),
        )?;
        let mut req = IfReq::new(name)?;
        req.set_ipv4(netmask);
        self.ioctl(
            libc::SIOCSIFNETMASK,
            &mut req,
            &format!("set netmask {netmask} on {name}"),
        )
    }

    /// Adds `default via gateway`.
    pub fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        // SAFETY: `rtentry` is plain integers, sockaddrs and one pointer; all-zero is valid
        // (a null `rt_dev` means "pick the device from the gateway").
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_v4(gateway);
        rt.rt_flags = (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort;
        // SAFETY: SIOCADDRT takes a `struct rtentry *`; `rt` lives across the call.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCADDRT, &mut rt) };
        if rc < 0 {
            return Err(SysError::io(
                format!("add default route via {gateway}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}
