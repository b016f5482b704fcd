//! tsbench: TCP request/response latency and connect-request-response rate, the part of
//! netperf's TCP_RR / TCP_CRR that the benchmark harness (`scripts/bench.sh`) needs. netperf
//! is not in Debian main, so this small tool of ours stands in for it.
//!
//! `tsbench server` is an echo server (a pool of threads blocked in accept, TCP_NODELAY); `tsbench rr`
//! keeps one connection and times each round trip of a `--size`-byte message; `tsbench crr`
//! opens a fresh connection per transaction (connect, request, response, close) and times
//! the whole of it. Both clients stop at `--count` transactions or `--duration` seconds,
//! whichever comes first, and print one JSON object on stdout. Every wait has a timeout, so
//! a stalled path ends the run with an error instead of hanging it.
//!
//! Plain std (threads and `std::net`): the measurement is a blocking ping-pong, which is
//! exactly what a thread does best, and an async runtime would only add its own wake-ups.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: tsbench server [--bind ADDR] [--port PORT]
       tsbench rr  --connect HOST:PORT [--size N] [--count N] [--duration SECS] [--warmup N]
       tsbench crr --connect HOST:PORT [--size N] [--count N] [--duration SECS]

server  echo server; prints `listening on ADDR:PORT` once bound (default 127.0.0.1, port 0)
rr      round trips on one connection: latency percentiles and transactions per second
crr     connect, request, response, close per transaction: rate and latency percentiles
        defaults: --size 1, --count 10000 (rr) / 1000 (crr), --duration 10, --warmup 100
output  one JSON object on stdout; exit 1 on error";

/// How long one connect or one read/write may take before the run is called failed.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections the server handles at once (each `rr` client holds one; `crr` one at a time).
const SERVER_THREADS: usize = 16;

/// Errors a `crr` run tolerates (each is counted) before giving up.
const MAX_CRR_ERRORS: u64 = 10;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") => Opts::parse(&args[1..]).and_then(|o| server(&o)),
        Some("rr") => Opts::parse(&args[1..]).and_then(|o| rr(&o)),
        Some("crr") => Opts::parse(&args[1..]).and_then(|o| crr(&o)),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(format!("missing or unknown mode\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsbench: {e}");
            ExitCode::from(1)
        }
    }
}

struct Opts {
    bind: String,
    port: u16,
    connect: Option<String>,
    size: usize,
    count: Option<u64>,
    duration: Duration,
    warmup: u64,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            bind: "127.0.0.1".into(),
            port: 0,
            connect: None,
            size: 1,
            count: None,
            duration: Duration::from_secs(10),
            warmup: 100,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            let number = |v: String| {
                v.parse::<u64>()
                    .map_err(|_| format!("{flag}: not a number: {v}"))
            };
            match flag.as_str() {
                "--bind" => o.bind = value()?,
                "--port" => o.port = number(value()?)? as u16,
                "--connect" => o.connect = Some(value()?),
                "--size" => o.size = number(value()?)?.max(1) as usize,
                "--count" => o.count = Some(number(value()?)?),
                "--warmup" => o.warmup = number(value()?)?,
                "--duration" => {
                    let v = value()?;
                    let secs: f64 = v
                        .parse()
                        .map_err(|_| format!("--duration: not a number: {v}"))?;
                    o.duration = Duration::from_secs_f64(secs.max(0.0));
                }
                other => return Err(format!("unknown option {other}\n{USAGE}")),
            }
        }
        Ok(o)
    }

    fn target(&self) -> Result<SocketAddr, String> {
        let text = self
            .connect
            .as_deref()
            .ok_or("--connect HOST:PORT is required")?;
        text.to_socket_addrs()
            .map_err(|e| format!("--connect {text}: {e}"))?
            .next()
            .ok_or_else(|| format!("--connect {text}: no address"))
    }
}

fn server(o: &Opts) -> Result<(), String> {
    let listener = TcpListener::bind((o.bind.as_str(), o.port))
        .map_err(|e| format!("bind {}:{}: {e}", o.bind, o.port))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on {local}");
    io::stdout().flush().map_err(|e| e.to_string())?;
    // A fixed pool blocked in accept(): no thread is spawned per connection, so a `crr`
    // transaction times the network path, not thread creation.
    let workers: Vec<_> = (0..SERVER_THREADS)
        .map(|_| {
            let listener = listener.try_clone().map_err(|e| e.to_string())?;
            Ok(thread::spawn(move || serve(&listener)))
        })
        .collect::<Result<_, String>>()?;
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn serve(listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = echo(stream);
            }
            // Out of fds and the like: back off, then keep serving.
            Err(e) => {
                eprintln!("tsbench: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn echo(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

fn connect(target: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// One request out, the whole echo back.
fn transact(stream: &mut TcpStream, request: &[u8], response: &mut [u8]) -> io::Result<()> {
    stream.write_all(request)?;
    stream.read_exact(response)
}

fn rr(o: &Opts) -> Result<(), String> {
    let target = o.target()?;
    let count = o.count.unwrap_or(10_000);
    let request = vec![0x5au8; o.size];
    let mut response = vec![0u8; o.size];
    let mut stream = connect(target).map_err(|e| format!("connect {target}: {e}"))?;
    for _ in 0..o.warmup {
        transact(&mut stream, &request, &mut response).map_err(|e| format!("warm-up: {e}"))?;
    }
    let mut samples = Vec::with_capacity(count.min(10_000_000) as usize);
    let start = Instant::now();
    while (samples.len() as u64) < count && start.elapsed() < o.duration {
        let t = Instant::now();
        transact(&mut stream, &request, &mut response)
            .map_err(|e| format!("round trip {}: {e}", samples.len() + 1))?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed();
    report("rr", target, o.size, samples, elapsed, 0)
}

fn crr(o: &Opts) -> Result<(), String> {
    let target = o.target()?;
    let count = o.count.unwrap_or(1_000);
    let request = vec![0x5au8; o.size];
    let mut response = vec![0u8; o.size];
    let mut samples = Vec::with_capacity(count.min(10_000_000) as usize);
    let mut errors = 0u64;
    let start = Instant::now();
    while (samples.len() as u64) < count && start.elapsed() < o.duration {
        let t = Instant::now();
        let result = connect(target).and_then(|mut s| transact(&mut s, &request, &mut response));
        match result {
            Ok(()) => samples.push(t.elapsed().as_nanos() as u64),
            Err(e) => {
                errors += 1;
                eprintln!("tsbench: transaction {}: {e}", samples.len() + 1);
                if errors >= MAX_CRR_ERRORS {
                    return Err(format!("{errors} failed transactions, giving up"));
                }
            }
        }
    }
    let elapsed = start.elapsed();
    report("crr", target, o.size, samples, elapsed, errors)
}

fn report(
    mode: &str,
    target: SocketAddr,
    size: usize,
    mut samples: Vec<u64>,
    elapsed: Duration,
    errors: u64,
) -> Result<(), String> {
    if samples.is_empty() {
        return Err("no transaction completed".into());
    }
    samples.sort_unstable();
    let n = samples.len();
    let pct = |p: f64| samples[(((n as f64) * p).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3;
    let mean = samples.iter().sum::<u64>() as f64 / n as f64 / 1e3;
    println!(
        "{{\"mode\":\"{mode}\",\"target\":\"{target}\",\"size\":{size},\"count\":{n},\
         \"errors\":{errors},\"seconds\":{:.6},\"rate_per_s\":{:.1},\"mean_us\":{mean:.2},\
         \"p50_us\":{:.2},\"p90_us\":{:.2},\"p99_us\":{:.2},\"min_us\":{:.2},\"max_us\":{:.2}}}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        samples[0] as f64 / 1e3,
        samples[n - 1] as f64 / 1e3,
    );
    Ok(())
}
