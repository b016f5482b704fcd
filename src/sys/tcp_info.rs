//! The kernel's own view of a host TCP connection (`getsockopt(TCP_INFO)`): round-trip time,
//! retransmissions, segments and bytes acknowledged, which only the kernel knows and the flow
//! reports show for the host side of each flow.
//!
//! The buffer is the C library's `struct tcp_info`. glibc's declaration ends at
//! `tcpi_data_segs_out`, which is as far as we read, and it omits the eighth `u8` (the
//! `delivery_rate_app_limited`/`fastopen_client_fail` bitfields) whose byte alignment padding
//! takes anyway; the offsets are checked against `include/uapi/linux/tcp.h` at compile time,
//! so a different layout fails the build instead of reading the wrong fields. The kernel
//! copies `min(optlen, its size)` bytes: an older kernel fills a shorter prefix and the rest
//! stays zero, a newer one simply has more to say than we ask for.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Byte offsets of the fields read, from `include/uapi/linux/tcp.h` (seven more `u8` before
/// `tcpi_rto`, then `u32`s, then the `u64`s from `tcpi_pacing_rate`).
const _: () = {
    assert!(offset_of!(libc::tcp_info, tcpi_state) == 0);
    assert!(offset_of!(libc::tcp_info, tcpi_rto) == 8);
    assert!(offset_of!(libc::tcp_info, tcpi_unacked) == 24);
    assert!(offset_of!(libc::tcp_info, tcpi_rtt) == 68);
    assert!(offset_of!(libc::tcp_info, tcpi_rttvar) == 72);
    assert!(offset_of!(libc::tcp_info, tcpi_snd_cwnd) == 80);
    assert!(offset_of!(libc::tcp_info, tcpi_total_retrans) == 100);
    assert!(offset_of!(libc::tcp_info, tcpi_pacing_rate) == 104);
    assert!(offset_of!(libc::tcp_info, tcpi_bytes_acked) == 120);
    assert!(offset_of!(libc::tcp_info, tcpi_bytes_received) == 128);
    assert!(offset_of!(libc::tcp_info, tcpi_segs_out) == 136);
    assert!(offset_of!(libc::tcp_info, tcpi_segs_in) == 140);
    assert!(offset_of!(libc::tcp_info, tcpi_notsent_bytes) == 144);
    assert!(offset_of!(libc::tcp_info, tcpi_data_segs_out) == 156);
    assert!(size_of::<libc::tcp_info>() >= 160);
};

/// What the kernel reports of one TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    /// The kernel's TCP state: 1 `ESTABLISHED`, 2 `SYN_SENT`, 3 `SYN_RECV`, 4 `FIN_WAIT1`,
    /// ... (`include/net/tcp_states.h`).
    pub state: u8,
    /// Smoothed round-trip time, in microseconds.
    pub rtt_us: u32,
    /// Variation of the round-trip time, in microseconds.
    pub rttvar_us: u32,
    /// Segments sent again over the connection's lifetime.
    pub total_retrans: u32,
    /// Segments sent, retransmissions and pure ACKs included.
    pub segs_out: u32,
    /// Segments received, pure ACKs included.
    pub segs_in: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Bytes written to the socket and not yet sent.
    pub notsent_bytes: u32,
    /// Bytes the peer has acknowledged (an active opener's SYN counts as one).
    pub bytes_acked: u64,
    /// Bytes received in sequence (a FIN counts as one).
    pub bytes_received: u64,
    /// Congestion window, in segments.
    pub snd_cwnd: u32,
}

/// Reads `TCP_INFO` of a TCP socket.
pub fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    // SAFETY: `tcp_info` is plain integers; all-zero bytes are a valid value, and zero is
    // what the fields the kernel does not fill must read as.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes and `len` is a valid `socklen_t` the kernel
    // may lower; both live across the call. A non-TCP socket fails with EOPNOTSUPP.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpInfo {
        state: info.tcpi_state,
        rtt_us: info.tcpi_rtt,
        rttvar_us: info.tcpi_rttvar,
        total_retrans: info.tcpi_total_retrans,
        segs_out: info.tcpi_segs_out,
        segs_in: info.tcpi_segs_in,
        unacked: info.tcpi_unacked,
        notsent_bytes: info.tcpi_notsent_bytes,
        bytes_acked: info.tcpi_bytes_acked,
        bytes_received: info.tcpi_bytes_received,
        snd_cwnd: info.tcpi_snd_cwnd,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;

    const ESTABLISHED: u8 = 1;

    #[test]
    fn counts_the_bytes_of_a_loopback_connection_on_both_ends() {
        const N: usize = 1 << 20;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();

        let reading = thread::spawn(move || {
            let mut data = vec![0; N];
            receiver.read_exact(&mut data).unwrap();
            receiver
        });
        sender.write_all(&vec![0x5a; N]).unwrap();
        let receiver = reading.join().unwrap();

        // The reader has everything; the last ACKs may still be on their way to the sender.
        let deadline = Instant::now() + Duration::from_secs(5);
        let sent = loop {
            let info = tcp_info(sender.as_fd()).unwrap();
            if info.unacked == 0 || Instant::now() > deadline {
                break info;
            }
            thread::sleep(Duration::from_millis(5));
        };
        // The SYN of the side that connected counts as one acknowledged byte.
        assert_eq!(sent.bytes_acked, N as u64 + 1, "{sent:?}");
        assert_eq!(sent.unacked, 0);
        assert_eq!(sent.notsent_bytes, 0);
        assert_eq!(sent.state, ESTABLISHED);
        assert!(sent.segs_out > 0 && sent.snd_cwnd > 0, "{sent:?}");
        assert!(sent.rtt_us > 0, "{sent:?}");

        let received = tcp_info(receiver.as_fd()).unwrap();
        assert_eq!(received.bytes_received, N as u64, "{received:?}");
        assert_eq!(received.state, ESTABLISHED);
        assert!(received.segs_in > 0, "{received:?}");
    }

    #[test]
    fn a_socket_that_is_not_tcp_is_an_error() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = tcp_info(udp.as_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP));
    }
}
