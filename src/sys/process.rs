//! Process plumbing for `tapsplice run`: a child in fresh namespaces that waits for the
//! network before it runs the user's command, a pidfd to watch it from the event loop, and
//! its exit status.
//!
//! The child is forked by hand rather than with `std::process::Command`: it must unshare its
//! namespaces, let the parent write its uid/gid maps and open the TAP inside them, and only
//! then exec. `Command::spawn` blocks until exec, so it cannot host that hand-shake.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigHandler, Signal, kill, signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, execvp, fork, pipe2, read, write};

use super::{Result, SysError};

/// Ends this (forked) process at once, without running exit handlers or flushing buffers
/// that belong to the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` never returns and touches no Rust state; skipping destructors in a
    // forked child is exactly what is wanted.
    unsafe { libc::_exit(code) }
}

/// A child process sitting in its own namespaces, not yet running its command.
pub struct IsolatedChild {
    pid: Pid,
    go: Option<OwnedFd>,
}

impl IsolatedChild {
    /// Forks a child that unshares a network namespace (and a user namespace when
    /// `own_userns`), then waits until [`IsolatedChild::start`] before it execs `argv`.
    /// With `resolv_conf`, the child also gets a private mount namespace in which that file
    /// is bind-mounted over `/etc/resolv.conf` (the host's file is not touched).
    ///
    /// Must be called while this process is single-threaded.
    pub fn spawn(argv: &[String], own_userns: bool, resolv_conf: Option<&Path>) -> Result<Self> {
        let cargs: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| SysError::Helper("command contains a NUL byte".into()))?;
        if cargs.is_empty() {
            return Err(SysError::Helper("no command given".into()));
        }
        let (ready_r, ready_w) =
            pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SysError::errno("pipe", e))?;
        let (go_r, go_w) =
            pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SysError::errno("pipe", e))?;
        let mut flags = CloneFlags::CLONE_NEWNET;
        if own_userns {
            flags |= CloneFlags::CLONE_NEWUSER;
        }
        if resolv_conf.is_some() {
            flags |= CloneFlags::CLONE_NEWNS;
        }
        // SAFETY: the caller guarantees a single-threaded process; the child only calls
        // async-signal-safe functions and exec (or `_exit`).
        match unsafe { fork() }.map_err(|e| SysError::errno("fork", e))? {
            ForkResult::Child => {
                drop(ready_r);
                drop(go_w);
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                if let Err(e) = unshare(flags) {
                    let _ = write(&ready_w, format!("unshare namespaces: {e}").as_bytes());
                    exit_now(1);
                }
                let _ = write(&ready_w, b"1");
                drop(ready_w);
                let mut byte = [0u8; 1];
                if !matches!(read(&go_r, &mut byte), Ok(1)) {
                    exit_now(1);
                }
                if let Some(path) = resolv_conf
                    && let Err(e) = bind_resolv_conf(path)
                {
                    let msg = format!("tapsplice: warning: cannot replace /etc/resolv.conf: {e}\n");
                    let _ = write(std::io::stderr(), msg.as_bytes());
                }
                // SAFETY: restoring the default disposition of SIGPIPE (Rust's runtime
                // ignores it, and ignored signals survive exec) is async-signal-safe.
                let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
                let err = execvp(&cargs[0], &cargs).unwrap_err();
                let msg = format!("tapsplice: cannot run {}: {err}\n", argv[0]);
                let _ = write(std::io::stderr(), msg.as_bytes());
                exit_now(127);
            }
            ForkResult::Parent { child } => {
                drop(ready_w);
                drop(go_r);
                let mut child = IsolatedChild {
                    pid: child,
                    go: Some(go_w),
                };
                let mut buf = [0u8; 256];
                let n = read(&ready_r, &mut buf).unwrap_or(0);
                if &buf[..n] != b"1" {
                    let why = String::from_utf8_lossy(&buf[..n]).into_owned();
                    child.reap();
                    return Err(SysError::Helper(if why.is_empty() {
                        "child exited before it made its namespaces".into()
                    } else {
                        why
                    }));
                }
                if own_userns {
                    child.map_ids()?;
                }
                Ok(child)
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Maps our own uid and gid to root inside the child's new user namespace (the one
    /// mapping an unprivileged process may write without newuidmap).
    fn map_ids(&self) -> Result<()> {
        let pid = self.pid.as_raw();
        let put = |file: &str, text: String| {
            std::fs::write(format!("/proc/{pid}/{file}"), text)
                .map_err(|e| SysError::io(format!("write /proc/{pid}/{file}"), e))
        };
        put("setgroups", "deny".into())?;
        put("uid_map", format!("0 {} 1\n", Uid::current()))?;
        put("gid_map", format!("0 {} 1\n", Gid::current()))
    }

    /// Lets the child exec its command.
    pub fn start(&mut self) -> Result<()> {
        if let Some(go) = self.go.take() {
            write(&go, b"g").map_err(|e| SysError::errno("start command", e))?;
        }
        Ok(())
    }

    /// A descriptor that becomes readable when the child exits.
    pub fn pidfd(&self) -> Result<OwnedFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid.as_raw(), 0) };
        if fd < 0 {
            return Err(SysError::io("pidfd_open", std::io::Error::last_os_error()));
        }
        // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(self.pid, sig);
    }

    /// Waits for the child and returns its exit status as a shell would report it.
    pub fn reap(&mut self) -> i32 {
        self.go = None;
        loop {
            match waitpid(self.pid, None) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return 1,
            }
        }
    }
}

/// In a fresh mount namespace: stops mounts propagating back to the host, then puts `path`
/// over `/etc/resolv.conf`.
fn bind_resolv_conf(path: &Path) -> nix::Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some(path),
        "/etc/resolv.conf",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
}

/// Raises the soft limit on open files to the hard limit: every flow holds a host socket,
/// and the usual soft limit of 1024 is far below the flow tables' bounds.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Whether `fd` is an open descriptor in this process.
pub fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; an invalid fd yields EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Takes ownership of a descriptor number inherited from our parent (`--ready-fd`,
/// `--exit-fd`). Returns `None` if it is not open.
pub fn inherited_fd(fd: i32) -> Option<OwnedFd> {
    if fd < 0 || !fd_is_open(fd) {
        return None;
    }
    // SAFETY: the fd is open, was handed to us by our parent for this purpose, and nothing
    // else in this process claims it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Marks an inherited descriptor close-on-exec so children we fork do not keep it.
pub fn set_cloexec(fd: &OwnedFd) {
    let _ = nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
}
