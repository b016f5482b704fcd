//! Servers on the host's loopback: a TCP server of pattern streams and a minimal HTTP server.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::*;

/// What the test server saw on one connection.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    /// Everything the client sent up to its EOF.
    pub received: Digest,
    /// What the server wrote back.
    pub sent: Digest,
    /// An I/O error that cut the exchange short.
    pub error: Option<String>,
}

/// Accepts connections on a listener in a thread, handing each to a handler thread of its own,
/// until dropped (the servers below are built on it).
struct Acceptor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Acceptor {
    fn spawn(
        listener: TcpListener,
        handle: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Acceptor {
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let handle = handle.clone();
                    thread::spawn(move || handle(conn));
                }
            })
        };
        Acceptor {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP server on 127.0.0.1:0: for each connection it reads to EOF (hashing and counting), then
/// writes the pattern stream (`reply_seed`, `reply_len` bytes) and closes. Stopped on drop.
pub struct TestServer {
    records: Arc<Mutex<Vec<ConnRecord>>>,
    accepted: Arc<AtomicU32>,
    acceptor: Acceptor,
}

/// Per-operation I/O timeout on server sockets, so a stuck test cannot hang a server thread.
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(120);

impl TestServer {
    pub fn start(reply_seed: u64, reply_len: u64) -> TestServer {
        TestServer::start_on(([127, 0, 0, 1], 0).into(), reply_seed, reply_len)
    }

    /// Like [`TestServer::start`], listening on `bind` (port 0 for any), e.g. `[::1]:0`.
    pub fn start_on(bind: SocketAddr, reply_seed: u64, reply_len: u64) -> TestServer {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let records = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU32::new(0));
        let block = pattern_block(reply_seed);
        let acceptor = {
            let (records, accepted) = (records.clone(), accepted.clone());
            Acceptor::spawn(listener, move |conn| {
                accepted.fetch_add(1, Ordering::SeqCst);
                let rec = serve_conn(conn, &block, reply_len);
                records.lock().unwrap().push(rec);
            })
        };
        TestServer {
            records,
            accepted,
            acceptor,
        }
    }

    pub fn port(&self) -> u16 {
        self.acceptor.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Records of finished connections, in the order they finished.
    pub fn records(&self) -> Vec<ConnRecord> {
        self.records.lock().unwrap().clone()
    }

    /// Waits (at most `deadline`) for the one connection of a client's exchange of pattern
    /// streams and checks it, exactly one and without I/O error, with [`assert_exchange`]
    /// (`far` naming this server's end). `client` is what the client reported: (sent, received).
    pub fn assert_one_exchange(
        &self,
        far: &str,
        client: &(Digest, Digest),
        (up_seed, down_seed, len): (u64, u64, u64),
        deadline: Duration,
    ) {
        let recs = self.wait_records(1, deadline);
        assert_eq!(
            recs.len(),
            1,
            "expected exactly one connection at the server: {recs:?}"
        );
        let rec = &recs[0];
        assert_eq!(rec.error, None, "server side I/O error");
        let server = (rec.sent.clone(), rec.received.clone());
        assert_exchange(far, client, &server, (up_seed, down_seed, len));
    }

    /// Waits until `n` connections have finished; returns their records.
    pub fn wait_records(&self, n: usize, deadline: Duration) -> Vec<ConnRecord> {
        wait_for_value(
            deadline,
            &format!("{n} finished connections at the test server"),
            || {
                let r = self.records();
                (r.len() >= n).then_some(r)
            },
        )
    }
}

fn serve_conn(mut conn: TcpStream, block: &[u8], reply_len: u64) -> ConnRecord {
    let _ = conn.set_read_timeout(Some(SERVER_IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(SERVER_IO_TIMEOUT));
    let mut rx = Hasher::default();
    let mut tx = Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    let result = (|| -> io::Result<()> {
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            rx.update(&buf[..n]);
        }
        for_each_chunk_of(block.to_vec(), reply_len, |chunk| {
            conn.write_all(chunk)?;
            tx.update(chunk);
            Ok(())
        })?;
        conn.shutdown(std::net::Shutdown::Write)
    })();
    ConnRecord {
        received: rx.finish(),
        sent: tx.finish(),
        error: result.err().map(|e| e.to_string()),
    }
}

/// A port on 127.0.0.1 with nothing listening: bound, read, released.
pub fn refused_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// One HTTP request as the server saw it.
#[derive(Clone, Debug)]
pub struct HttpRecord {
    pub request_line: String,
    /// The request body (`Content-Length` bytes), empty for GET.
    pub body: Digest,
    /// What the server sent as the response body.
    pub sent: Digest,
}

/// A minimal HTTP/1.1 server on 127.0.0.1:0 answering every request with `200` and a fixed
/// body (`Connection: close`), recording the request body's digest. Stopped on drop.
pub struct HttpServer {
    records: Arc<Mutex<Vec<HttpRecord>>>,
    acceptor: Acceptor,
}

impl HttpServer {
    pub fn start(body: Vec<u8>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let records = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let records = records.clone();
            Acceptor::spawn(listener, move |conn| {
                if let Ok(rec) = serve_http(conn, &body) {
                    records.lock().unwrap().push(rec);
                }
            })
        };
        HttpServer { records, acceptor }
    }

    pub fn port(&self) -> u16 {
        self.acceptor.addr.port()
    }

    pub fn records(&self) -> Vec<HttpRecord> {
        self.records.lock().unwrap().clone()
    }

    /// Checks a POST of `upload` to `path` that the server answered with `body` (its body):
    /// the client's run (`out`, e.g. [`curl_post`]) succeeded and printed exactly `body`, and the
    /// server saw one request, `POST {path} HTTP/1.1`, whose body was `upload`. Returns it.
    pub fn assert_one_post(
        &self,
        out: &Captured,
        what: &str,
        path: &str,
        upload: &[u8],
        body: &[u8],
    ) -> HttpRecord {
        out.assert_success(what);
        assert_eq!(
            Digest::of(&out.stdout),
            Digest::of(body),
            "body received by curl differs"
        );
        assert!(out.stdout == body, "body bytes differ");
        let mut recs = self.records();
        assert_eq!(recs.len(), 1, "expected one request: {recs:?}");
        assert_eq!(recs[0].request_line, format!("POST {path} HTTP/1.1"));
        assert_eq!(
            recs[0].body,
            Digest::of(upload),
            "request body received by the server differs"
        );
        recs.remove(0)
    }
}

fn serve_http(mut conn: TcpStream, body: &[u8]) -> io::Result<HttpRecord> {
    conn.set_read_timeout(Some(SERVER_IO_TIMEOUT))?;
    conn.set_write_timeout(Some(SERVER_IO_TIMEOUT))?;
    // Headers: at most 64 KiB.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let header_end = loop {
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("headers too long"));
        }
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::other("EOF in headers"));
        }
        head.extend_from_slice(&buf[..n]);
    };
    let text = String::from_utf8_lossy(&head[..header_end]).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_string();
    let header = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let content_length: u64 = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // curl asks first for bodies over 1 MiB; answering saves its 1 s wait.
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut rx = Hasher::default();
    let already = &head[header_end..];
    let first = already.len().min(content_length as usize);
    rx.update(&already[..first]);
    let mut left = content_length - first as u64;
    let mut big = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = left.min(big.len() as u64) as usize;
        let n = conn.read(&mut big[..want])?;
        if n == 0 {
            return Err(io::Error::other("EOF in body"));
        }
        rx.update(&big[..n]);
        left -= n as u64;
    }
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(header.as_bytes())?;
    conn.write_all(body)?;
    conn.shutdown(std::net::Shutdown::Write)?;
    Ok(HttpRecord {
        request_line,
        body: rx.finish(),
        sent: Digest::of(body),
    })
}

/// A UDP port on `ip` with nothing bound to it: bound, read, released.
pub fn closed_udp_port(ip: std::net::IpAddr) -> u16 {
    let s = std::net::UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind udp {ip}: {e}"));
    s.local_addr().expect("local_addr").port()
}

/// A guest client's run against a [`TestServer`] on the host's loopback, via the gateway.
pub struct GatewayRun {
    pub server: TestServer,
    /// The client's report (the last JSON line of its stdout).
    pub report: Json,
    pub out: Captured,
}

/// Starts a [`TestServer`] on 127.0.0.1 (replying `len` bytes of `down_seed`) and runs a guest
/// client against it through the gateway: `run` gets the arguments of `python3` for
/// [`py_client`] (`len` bytes of `up_seed`, `connect_timeout_s`) and runs them, which must
/// succeed (`what` names the run).
pub fn client_via_gateway(
    what: &str,
    (up_seed, down_seed, len): (u64, u64, u64),
    connect_timeout_s: u32,
    run: impl FnOnce(Vec<String>) -> Captured,
) -> GatewayRun {
    let server = TestServer::start(down_seed, len);
    let out = run(py_client(
        GATEWAY,
        server.port(),
        len,
        up_seed,
        connect_timeout_s,
    ));
    out.assert_success(what);
    let report = Json::last_in(&out.stdout_str());
    GatewayRun {
        server,
        report,
        out,
    }
}

/// [`client_via_gateway`] (10 s to connect) for an exchange checked at both ends
/// ([`TestServer::assert_one_exchange`], 30 s at most for the server's record).
pub fn exchange_via_gateway(
    what: &str,
    seeds_len: (u64, u64, u64),
    run: impl FnOnce(Vec<String>) -> Captured,
) -> GatewayRun {
    let r = client_via_gateway(what, seeds_len, 10, run);
    r.server.assert_one_exchange(
        "host",
        &r.report.digests(),
        seeds_len,
        Duration::from_secs(30),
    );
    r
}

/// [`client_via_gateway`] (1000 bytes, 5 s to connect) where `--disable-host-loopback` is in
/// effect: the connect fails with ENETUNREACH, and the live server on the host's loopback (so
/// that the failure comes from the policy, not from a closed port) sees no connection.
pub fn assert_gateway_unreachable(
    what: &str,
    (up_seed, down_seed): (u64, u64),
    run: impl FnOnce(Vec<String>) -> Captured,
) {
    let r = client_via_gateway(what, (up_seed, down_seed, 1000), 5, run);
    r.report.assert_connect_error(
        "connect to the gateway despite --disable-host-loopback",
        libc::ENETUNREACH,
    );
    assert_eq!(
        r.server.accepted(),
        0,
        "the host's loopback server got a connection"
    );
}
