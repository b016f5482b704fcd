//! Socket calls the standard library and mio do not offer: receiving a datagram while
//! learning its full length, so an oversized one is dropped rather than passed on cut short.

use std::io;
use std::os::fd::AsRawFd;

/// Receives one datagram into `buf` and returns its real length, which is larger than
/// `buf.len()` when the datagram did not fit (and was truncated).
pub fn recv_datagram(socket: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call;
    // MSG_TRUNC only changes the returned length, never writes beyond `len`.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
