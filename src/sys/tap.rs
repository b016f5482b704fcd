//! Opening a TAP device: `/dev/net/tun` plus `TUNSETIFF(IFF_TAP | IFF_NO_PI)`.
//!
//! Attaching by name either creates the device or joins one that already exists (rootlesskit
//! creates `tap0` itself before it starts us). Frames are read and written whole, one per
//! syscall, in non-blocking mode so the event loop can drain the queue until `EAGAIN`.
//! The caller must be in the target network namespace when it opens the device; the fd
//! keeps that namespace afterwards.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{Result, SysError};
use crate::sys::ifconfig::IfReq;

const TUN_PATH: &str = "/dev/net/tun";

/// Opens `/dev/net/tun` and attaches it to the TAP device `name` (creating it if missing).
pub fn open_tap(name: &str) -> Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(|e| SysError::io(format!("open {TUN_PATH}"), e))?;
    let mut req = IfReq::new(name)?;
    req.set_flags((libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short);
    // SAFETY: TUNSETIFF reads (and may write back the name into) a `struct ifreq`, which
    // `req.as_mut_ptr()` points to for the duration of the call; the fd is a valid tun fd.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) };
    if rc < 0 {
        return Err(SysError::io(
            format!("attach TAP device {name:?} (TUNSETIFF)"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(OwnedFd::from(file))
}
