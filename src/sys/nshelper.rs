//! A long-lived helper process inside the container's namespaces that makes sockets there on
//! request: the splice fast path of port forwarding connects such a socket to the guest's
//! port, so the connection never crosses the TAP or the userspace stack.
//!
//! Why a process and not a thread: a socket belongs to the network namespace it was created
//! in, so creating it is all that has to happen inside; but entering a network namespace owned
//! by another user namespace needs that user namespace first, and `setns(CLONE_NEWUSER)` is
//! only allowed in a single-threaded process. So, as for the TAP (see `netns`), a forked child
//! joins the user namespace (unless it is already ours) and the network namespace. Unlike the
//! TAP helper it stays: it waits on a `SOCK_SEQPACKET` pair for one-byte requests (`4` for an
//! IPv4 TCP socket, `6` for IPv6) and answers each with the new descriptor (`SCM_RIGHTS`) or
//! an error text. The socket is connected by tapsplice itself, non-blocking, in its event
//! loop; the helper never blocks on the network.
//!
//! The helper keeps no descriptor of ours but its end of the pair (it closes everything else),
//! exits when that pair reaches EOF, and is killed by the kernel if tapsplice dies
//! (`PR_SET_PDEATHSIG`).

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socket,
};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};

use super::netns::{NsTarget, OpenNamespaces, helper_channel, send_fd, send_text};
use super::{Result, SysError};

/// Request byte for an IPv4 TCP socket.
const REQ_TCP4: u8 = b'4';
/// Request byte for an IPv6 TCP socket.
const REQ_TCP6: u8 = b'6';

/// Which kind of socket to make inside the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsSocketKind {
    Tcp4,
    Tcp6,
}

/// The tapsplice end of the helper.
pub struct NsSocketFactory {
    chan: OwnedFd,
    pid: Pid,
}

impl NsSocketFactory {
    /// Forks the helper into the target namespaces. Returns once it has joined them (or with
    /// its error).
    ///
    /// Must be called while this process is single-threaded (the helper is a fork of it).
    pub fn spawn(target: &NsTarget) -> Result<Self> {
        let namespaces = OpenNamespaces::open(target)?;
        let (parent_end, child_end) = helper_channel()?;
        let parent_pid = getpid();

        // SAFETY: the caller guarantees this process is single-threaded, so the child owns a
        // consistent copy of the address space; it only makes system calls and then `_exit`s.
        match unsafe { fork() }.map_err(|e| SysError::errno("fork socket helper", e))? {
            ForkResult::Child => {
                drop(parent_end);
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                // The event loop blocks SIGTERM and SIGINT to read them from a signalfd. The
                // helper takes SIGTERM as usual, but keeps SIGINT blocked: a terminal's Ctrl-C
                // goes to the whole process group, and tapsplice decides what it means.
                let mut mask = nix::sys::signal::SigSet::empty();
                mask.add(Signal::SIGINT);
                let _ = mask.thread_set_mask();
                if getppid() != parent_pid {
                    super::process::exit_now(0);
                }
                let joined = namespaces.enter();
                let chan = child_end.as_raw_fd();
                if let Err(err) = joined {
                    let _ = send_text(chan, &err.to_string());
                    super::process::exit_now(1);
                }
                close_all_but(chan);
                if send_text(chan, "ready").is_err() {
                    super::process::exit_now(1);
                }
                serve(chan)
            }
            ForkResult::Parent { child } => {
                drop(child_end);
                drop(namespaces);
                let factory = NsSocketFactory {
                    chan: parent_end,
                    pid: child,
                };
                // The first message says whether the helper made it into the namespaces.
                let mut buf = [0u8; 512];
                let len = loop {
                    match nix::sys::socket::recv(
                        factory.chan.as_raw_fd(),
                        &mut buf,
                        MsgFlags::empty(),
                    ) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(e) => return Err(SysError::errno("receive from socket helper", e)),
                        Ok(len) => break len,
                    }
                };
                if &buf[..len] != b"ready" {
                    let why = String::from_utf8_lossy(&buf[..len]).into_owned();
                    return Err(SysError::Helper(if why.is_empty() {
                        "socket helper exited before it joined the namespaces".into()
                    } else {
                        why
                    }));
                }
                nix::fcntl::fcntl(
                    &factory.chan,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                )
                .map_err(|e| SysError::errno("socket helper channel", e))?;
                Ok(factory)
            }
        }
    }

    /// The channel to register for readability: replies arrive on it.
    pub fn channel(&self) -> BorrowedFd<'_> {
        self.chan.as_fd()
    }

    /// Asks for one socket; the reply comes later through [`NsSocketFactory::receive`].
    /// Replies come in request order.
    pub fn request(&self, kind: NsSocketKind) -> io::Result<()> {
        let byte = match kind {
            NsSocketKind::Tcp4 => REQ_TCP4,
            NsSocketKind::Tcp6 => REQ_TCP6,
        };
        nix::sys::socket::send(self.chan.as_raw_fd(), &[byte], MsgFlags::MSG_DONTWAIT)
            .map(|_| ())
            .map_err(io::Error::from)
    }

    /// The next reply, if one is there: a socket, or the helper's reason for not making it.
    /// `Err` means the helper is gone.
    pub fn receive(&self) -> io::Result<Option<std::result::Result<OwnedFd, String>>> {
        let mut buf = [0u8; 512];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            self.chan.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(io::Error::from(e)),
        };
        let mut received = None;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel just installed these descriptors in our table
                    // (SCM_RIGHTS); nothing else owns them. Extra ones are closed at once.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if received.is_none() {
                        received = Some(owned);
                    }
                }
            }
        }
        let len = msg.bytes;
        match received {
            Some(fd) => Ok(Some(Ok(fd))),
            None if len == 0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "socket helper exited",
            )),
            None => Ok(Some(Err(String::from_utf8_lossy(&buf[..len]).into_owned()))),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }
}

impl Drop for NsSocketFactory {
    fn drop(&mut self) {
        // EOF on its channel ends the helper; the kill covers a helper stuck anywhere else.
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// The helper's loop: one socket per request byte, until EOF.
fn serve(chan: RawFd) -> ! {
    let mut buf = [0u8; 16];
    loop {
        let len = match nix::sys::socket::recv(chan, &mut buf, MsgFlags::empty()) {
            Ok(len) => len,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => super::process::exit_now(1),
        };
        if len == 0 {
            super::process::exit_now(0);
        }
        let family = match buf[0] {
            REQ_TCP4 => AddressFamily::Inet,
            REQ_TCP6 => AddressFamily::Inet6,
            _ => {
                let _ = send_text(chan, "unknown request");
                continue;
            }
        };
        let sent = match socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        ) {
            Ok(sock) => send_fd(chan, &sock),
            Err(e) => send_text(chan, &format!("socket: {}", e.desc())),
        };
        if sent.is_err() {
            super::process::exit_now(1);
        }
    }
}

/// Closes every descriptor above stderr except `keep`, so the helper holds nothing of ours
/// (the TAP, listeners, the ready and exit fds).
fn close_all_but(keep: RawFd) {
    let ranges = [(3u32, keep as u32 - 1), (keep as u32 + 1, u32::MAX)];
    for (first, last) in ranges {
        if first <= last {
            // SAFETY: close_range only closes descriptors in the given range; this process is
            // a single-threaded fork that owns no Rust object using them any more.
            unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        }
    }
}
