//! `splice(2)` between sockets through a pipe: the kernel moves the bytes (page references,
//! where it can), userspace never touches them.
//!
//! A socket cannot be spliced to another socket directly; one end of every `splice` must be
//! a pipe. So each direction of a spliced connection owns a pipe: socket -> pipe, then
//! pipe -> socket. Everything is non-blocking (`SPLICE_F_NONBLOCK` plus `O_NONBLOCK` on both
//! the pipe and the sockets), so `EAGAIN` says "come back when the fd is ready", as with
//! `read`/`write`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Moves up to `len` bytes from `from` to `to`, one of which must be a pipe. `Ok(0)` from a
/// socket means end of stream (with `len > 0`).
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: both descriptors are open for the duration of the call (they are borrowed), the
    // offsets are null (required for pipes and sockets), and splice touches no user memory.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking, close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// The capacity of a pipe in bytes.
pub fn pipe_size(pipe: BorrowedFd<'_>) -> io::Result<usize> {
    fcntl(pipe, FcntlArg::F_GETPIPE_SZ)
        .map(|n| n as usize)
        .map_err(io::Error::from)
}
