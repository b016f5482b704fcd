//! The Python helper run inside namespaces (and on the host), and the argv that runs it.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use super::*;

/// The helper run inside namespaces (and on the host): `python3 -c PY_NET MODE ARGS...`. Every
/// line it prints is a JSON object with `"mode"`. Addresses are IPv6 when they contain `:`. TCP
/// streams are the pattern streams of the module doc; UDP payloads are
/// `sha256("tapsplice-udp:{seed}:{i}")` repeated (see [`py_net_payload`]). A failure report is
/// `{"ok":false,"stage",...,"errno","error"}`, errno -1 for a timeout.
///
/// TCP (`IO_TIMEOUT`, 60 s unless given, bounds each socket operation after the connect):
///
/// - `tcp_client HOST PORT SEND_LEN SEED TIMEOUT [IO_TIMEOUT]`: connect (TIMEOUT seconds at
///   most), send the stream, shut down the write side, read to EOF: `{"ok":true,"local",
///   "sent_len","sent_sha","recv_len","recv_sha","connect_ms","elapsed_ms"}` or a failure at
///   stage `connect` or `data`.
/// - `tcp_many HOST PORT COUNT SEND_LEN SEED [IO_TIMEOUT]`: COUNT sequential connections (10 s
///   connect timeout each) doing the same; prints totals with the digests of everything sent and
///   received back to back, plus `"conns"` (a failure names the connection: `"conn"`).
/// - `tcp_server BIND_IP REPLY_LEN REPLY_SEED COUNT [IO_TIMEOUT]`: prints `{"port"}`, then
///   serves COUNT connections one after the other (read to EOF, send the reply stream, close),
///   printing for each `{"ok":true,"peer","peer_port","recv_len","recv_sha","sent_len",
///   "sent_sha"}`: `peer` is the client's source address.
///
/// UDP (sockets with 4 MiB receive buffers unless said otherwise):
///
/// - `udp_server BIND_IP IDLE [COUNT]`: prints `{"port"}`, echoes every datagram and prints
///   `{"from","from_port","len","sha"}` for each, until IDLE seconds pass without one (or COUNT
///   datagrams came); then `{"ok":true,"idle","count","recv_len","recv_sha","sent_len",
///   "sent_sha","sources"}` (`sources`: the distinct source addresses).
/// - `udp_echo HOST PORT SEED SIZES TIMEOUT`: one socket sends datagram `i` of each size (comma
///   list) and waits for its byte-identical echo from HOST:PORT: `{"ok":true,"count","local",
///   "local_port","sent_len","sent_sha","recv_len","recv_sha"}` or a failure at stage `send`,
///   `recv` or `check`.
/// - `udp_error HOST PORT TIMEOUT [RECVERR]`: a connected socket (default buffers) sends one
///   datagram and reads: `{"result":"error","errno",...}`, `{"result":"timeout"}` or
///   `{"result":"data"}`. With RECVERR `1` it sets IP_RECVERR / IPV6_RECVERR (the kernel reports
///   "soft" ICMP errors such as net unreachable only then) and adds the ICMP error's
///   `ee_origin`, `ee_type`, `ee_code` (and for IPv4 the `offender`).
/// - `udp_oversize HOST PORT SEED UP_BIG UP_OK DOWN_BIG DOWN_OK`: sends UP_BIG then UP_OK bytes
///   and reports every datagram that comes back within 1.5 s after; then asks the server
///   (`SEND:n`) for DOWN_BIG then DOWN_OK bytes (datagram `n` of seed 7) and reports what
///   arrives: `{"up":[...],"down":[...]}` with `len`, `is_ok`, `is_big`, `from` of each.
/// - `udp_burst HOST PORT SEED COUNT SIZE WINDOW`: COUNT datagrams with at most WINDOW
///   unanswered; stops after 3 s without progress. Reports received, lost, bad, elapsed, rate.
/// - `udp_multi HOST PORTS NSOCK ROUNDS SEED`: NSOCK sockets; each round every socket sends one
///   datagram to each port (comma list) and then each socket reads its echoes, which must be its
///   own, each from the port it went to (in any order). Reports the local ports.
/// - `udp_fanout HOST PORT COUNT`: COUNT sockets (default buffers), each sends one datagram and
///   reads its echo; all stay open until the end.
/// - `udp_timeline HOST PORT DURATION ACTIONS`: ACTIONS is JSON `[[t, sock, text], ...]`; sends
///   each text from the named socket at t seconds, prints every datagram received until DURATION
///   as `{"sock","recv","from","t_ms"}` and finally `{"done":true,"ports":{...}}`.
///
/// ICMP:
///
/// - `icmp_watch 4|6 IDLE`: a raw ICMP (ICMPv6) socket; prints `{"ready":true}`, then
///   `{"from","id","seq"}` for every echo request that arrives, until IDLE seconds of silence.
pub const PY_NET: &str = r#"
import hashlib, json, select, socket, struct, sys, time

BLOCK = 1 << 20
IO_TIMEOUT = 60.0
_blocks = {}
MODE = sys.argv[1]

def out(o):
    o = dict(o, mode=MODE)
    sys.stdout.write(json.dumps(o, separators=(",", ":")) + "\n")
    sys.stdout.flush()

def ms(t0):
    return int((time.monotonic() - t0) * 1000)

def fam(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def err(e):
    n = getattr(e, "errno", None)
    return {"errno": n if n is not None else -1, "error": str(e) or type(e).__name__}

def fail(stage, e, t0, **extra):
    out(dict(ok=False, stage=stage, elapsed_ms=ms(t0), **err(e), **extra))

def fmt(a):
    return "%s:%d" % a[:2]

# ---- TCP

def block(seed):
    b = _blocks.get(seed)
    if b is None:
        b = bytearray(b"".join(hashlib.sha256(b"tapsplice:%d:%d" % (seed, i)).digest()
                               for i in range(BLOCK // 32)))
        _blocks[seed] = b
    return b

def send_stream(sock, seed, n, h):
    blk = block(seed)
    mv = memoryview(blk)
    sent = k = 0
    while sent < n:
        blk[0:8] = k.to_bytes(8, "little")
        m = min(BLOCK, n - sent)
        sock.sendall(mv[:m])
        h.update(mv[:m])
        sent += m
        k += 1
    return sent

def recv_stream(sock, h):
    buf = bytearray(256 * 1024)
    mv = memoryview(buf)
    total = 0
    while True:
        r = sock.recv_into(buf)
        if r == 0:
            return total
        h.update(mv[:r])
        total += r

def connect(host, port, timeout, io_timeout):
    s = socket.socket(fam(host), socket.SOCK_STREAM)
    s.settimeout(float(timeout))
    s.connect((host, int(port)))
    s.settimeout(float(io_timeout))
    return s

def exchange(s, seed, n, hs, hr):
    sent = send_stream(s, int(seed), int(n), hs)
    s.shutdown(socket.SHUT_WR)
    recvd = recv_stream(s, hr)
    s.close()
    return sent, recvd

def tcp_client(host, port, n, seed, timeout, io_timeout=IO_TIMEOUT):
    t0 = time.monotonic()
    try:
        s = connect(host, port, timeout, io_timeout)
    except OSError as e:
        return fail("connect", e, t0)
    cms = ms(t0)
    local = s.getsockname()[0]
    hs, hr = hashlib.sha256(), hashlib.sha256()
    try:
        sent, recvd = exchange(s, seed, n, hs, hr)
    except OSError as e:
        return fail("data", e, t0)
    out({"ok": True, "local": local, "sent_len": sent, "sent_sha": hs.hexdigest(),
         "recv_len": recvd, "recv_sha": hr.hexdigest(), "connect_ms": cms, "elapsed_ms": ms(t0)})

def tcp_many(host, port, count, n, seed, io_timeout=IO_TIMEOUT):
    t0 = time.monotonic()
    hs, hr = hashlib.sha256(), hashlib.sha256()
    tsent = trecv = 0
    for i in range(int(count)):
        stage = "connect"
        try:
            s = connect(host, port, 10.0, io_timeout)
            stage = "data"
            sent, recvd = exchange(s, seed, n, hs, hr)
        except OSError as e:
            return fail(stage, e, t0, conn=i)
        tsent += sent
        trecv += recvd
    out({"ok": True, "conns": int(count), "sent_len": tsent, "sent_sha": hs.hexdigest(),
         "recv_len": trecv, "recv_sha": hr.hexdigest(), "elapsed_ms": ms(t0)})

def tcp_server(bind_ip, n, seed, count, io_timeout=IO_TIMEOUT):
    io_timeout = float(io_timeout)
    ls = socket.socket(fam(bind_ip), socket.SOCK_STREAM)
    ls.bind((bind_ip, 0))
    ls.listen(16)
    out({"port": ls.getsockname()[1]})
    ls.settimeout(io_timeout)
    for _ in range(int(count)):
        t0 = time.monotonic()
        try:
            c, peer = ls.accept()
            c.settimeout(io_timeout)
            hr, hs = hashlib.sha256(), hashlib.sha256()
            recvd = recv_stream(c, hr)
            sent = send_stream(c, int(seed), int(n), hs)
            c.shutdown(socket.SHUT_WR)
            c.close()
        except OSError as e:
            fail("serve", e, t0)
            continue
        out({"ok": True, "peer": peer[0], "peer_port": peer[1], "recv_len": recvd,
             "recv_sha": hr.hexdigest(), "sent_len": sent, "sent_sha": hs.hexdigest(),
             "elapsed_ms": ms(t0)})

# ---- UDP

def payload(seed, i, size):
    h = hashlib.sha256(b"tapsplice-udp:%d:%d" % (int(seed), int(i))).digest()
    return (h * (size // 32 + 1))[:size]

def udp_socket(f=socket.AF_INET):
    s = socket.socket(f, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE (root): past rmem_max
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return s

def same_addr(a, b, f):
    return socket.inet_pton(f, a) == socket.inet_pton(f, b)

def udp_server(bind_ip, idle, count="0"):
    s = udp_socket(fam(bind_ip))
    s.bind((bind_ip, 0))
    out({"port": s.getsockname()[1]})
    s.settimeout(float(idle))
    hs, hr = hashlib.sha256(), hashlib.sha256()
    sl = rl = n = 0
    sources = []
    idled = False
    while int(count) == 0 or n < int(count):
        try:
            data, frm = s.recvfrom(1 << 17)
        except socket.timeout:
            idled = True
            break
        hr.update(data); rl += len(data); n += 1
        if frm[0] not in sources:
            sources.append(frm[0])
        s.sendto(data, frm)
        hs.update(data); sl += len(data)
        out({"from": frm[0], "from_port": frm[1], "len": len(data),
             "sha": hashlib.sha256(data).hexdigest()})
    out({"ok": True, "idle": idled, "count": n, "recv_len": rl, "recv_sha": hr.hexdigest(),
         "sent_len": sl, "sent_sha": hs.hexdigest(), "sources": sources})

def udp_echo(host, port, seed, sizes, timeout):
    f = fam(host)
    dest = (host, int(port))
    s = udp_socket(f)
    s.settimeout(float(timeout))
    hs, hr = hashlib.sha256(), hashlib.sha256()
    sl = rl = n = 0
    t0 = time.monotonic()
    for i, size in enumerate(int(x) for x in sizes.split(",")):
        p = payload(seed, i, size)
        try:
            s.sendto(p, dest)
        except OSError as e:
            return fail("send", e, t0, index=i, size=size)
        hs.update(p); sl += len(p)
        try:
            data, frm = s.recvfrom(1 << 17)
        except OSError as e:
            return fail("recv", e, t0, index=i, size=size)
        hr.update(data); rl += len(data); n += 1
        if frm[1] != dest[1] or not same_addr(frm[0], host, f) or data != p:
            return out({"ok": False, "stage": "check", "index": i, "size": size, "from": fmt(frm),
                        "got_len": len(data), "equal": data == p})
    local = s.getsockname()
    out({"ok": True, "count": n, "local": local[0], "local_port": local[1], "sent_len": sl,
         "sent_sha": hs.hexdigest(), "recv_len": rl, "recv_sha": hr.hexdigest(),
         "elapsed_ms": ms(t0)})

def udp_error(host, port, timeout, recverr="0"):
    f = fam(host)
    s = socket.socket(f, socket.SOCK_DGRAM)
    level, opt = (socket.IPPROTO_IPV6, 25) if f == socket.AF_INET6 else (socket.IPPROTO_IP, 11)
    if recverr == "1":
        s.setsockopt(level, opt, 1)  # IPV6_RECVERR / IP_RECVERR
    s.connect((host, int(port)))
    s.settimeout(float(timeout))
    t0 = time.monotonic()
    try:
        s.send(b"tapsplice-error-probe")
        data = s.recv(2048)
        return out({"result": "data", "len": len(data), "elapsed_ms": ms(t0)})
    except socket.timeout:
        return out({"result": "timeout", "elapsed_ms": ms(t0)})
    except OSError as e:
        r = dict(result="error", elapsed_ms=ms(t0), **err(e))
    if recverr == "1":
        try:
            _, anc, _, _ = s.recvmsg(2048, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            for lvl, typ, data in anc:
                if lvl == level and typ == opt and len(data) >= 16:
                    ee_errno, origin, etype, code, _, _, _ = struct.unpack("=IBBBBII", data[:16])
                    r.update({"ee_errno": ee_errno, "ee_origin": origin, "ee_type": etype,
                              "ee_code": code})
                    if f == socket.AF_INET and len(data) >= 24:
                        r["offender"] = socket.inet_ntoa(data[20:24])
        except OSError as e:
            r["errqueue_error"] = str(e)
    out(r)

def drain(s, quiet):
    got = []
    s.settimeout(quiet)
    while True:
        try:
            data, frm = s.recvfrom(1 << 17)
        except socket.timeout:
            return got
        got.append((data, frm))

def udp_oversize(host, port, seed, up_big, up_ok, down_big, down_ok):
    dest = (host, int(port))
    up_big, up_ok, down_big, down_ok = int(up_big), int(up_ok), int(down_big), int(down_ok)
    s = udp_socket()
    r = {"ok": True}
    big, ok = payload(seed, 0, up_big), payload(seed, 1, up_ok)
    s.sendto(big, dest)
    s.sendto(ok, dest)
    got = drain(s, 1.5)
    r["up"] = [{"len": len(d), "is_ok": d == ok, "is_big": d == big, "from": fmt(f)} for d, f in got]
    s.sendto(b"SEND:%d" % down_big, dest)
    s.sendto(b"SEND:%d" % down_ok, dest)
    got = drain(s, 1.5)
    dbig, dok = payload(7, down_big, down_big), payload(7, down_ok, down_ok)
    r["down"] = [{"len": len(d), "is_ok": d == dok, "is_big": d == dbig, "from": fmt(f)} for d, f in got]
    out(r)

def udp_burst(host, port, seed, count, size, window):
    dest = (host, int(port))
    count, size, window = int(count), int(size), int(window)
    s = udp_socket()
    s.setblocking(False)
    pending = {}
    got = [False] * count
    nxt = received = bad = 0
    hs = hashlib.sha256()
    t0 = last = time.monotonic()
    while received < count:
        while nxt < count and len(pending) < window:
            p = payload(seed, nxt, size)
            try:
                s.sendto(p, dest)
            except BlockingIOError:
                break
            hs.update(p)
            pending[p] = nxt
            nxt += 1
        r, _, _ = select.select([s], [], [], 0.2)
        now = time.monotonic()
        if r:
            while True:
                try:
                    data, frm = s.recvfrom(1 << 17)
                except BlockingIOError:
                    break
                i = pending.pop(data, None)
                if i is None or frm != dest:
                    bad += 1
                    continue
                got[i] = True
                received += 1
                last = now
        elif now - last > 3.0:
            break
    # Up to the last datagram back: the 3 s waited for lost ones do not count.
    elapsed = last - t0
    hr = hashlib.sha256()
    for i in range(count):
        if got[i]:
            hr.update(payload(seed, i, size))
    out({"ok": received == count and bad == 0, "count": count, "sent": nxt, "received": received,
         "lost": nxt - received, "bad": bad, "sent_len": nxt * size, "sent_sha": hs.hexdigest(),
         "recv_len": received * size, "recv_sha": hr.hexdigest(), "elapsed_ms": int(elapsed * 1000),
         "pps": int(received / elapsed) if elapsed > 0 else 0})

def udp_multi(host, ports, nsock, rounds, seed):
    dests = [(host, int(p)) for p in ports.split(",")]
    socks = [udp_socket() for _ in range(int(nsock))]
    for s in socks:
        s.settimeout(5.0)
    n = 0
    hs, hr = hashlib.sha256(), hashlib.sha256()
    sl = rl = 0
    for r in range(int(rounds)):
        sent = []
        for k, s in enumerate(socks):
            for d in dests:
                p = payload(seed, n, 64 + n % 900)
                n += 1
                s.sendto(p, d)
                hs.update(p); sl += len(p)
                sent.append((k, d, p))
        # Each socket must get exactly its own echoes, each from the server it went to; the
        # two servers answer independently, so in any order.
        for k, s in enumerate(socks):
            want = {(d, p) for kk, d, p in sent if kk == k}
            while want:
                try:
                    data, frm = s.recvfrom(1 << 16)
                except OSError as e:
                    return out({"ok": False, "stage": "recv", "round": r, "sock": k, "error": str(e) or "timed out"})
                if (frm, data) not in want:
                    return out({"ok": False, "stage": "check", "round": r, "sock": k, "from": fmt(frm),
                                "len": len(data), "expected_from": sorted(fmt(d) for d, _ in want)})
                want.remove((frm, data))
                hr.update(data); rl += len(data)
    out({"ok": True, "datagrams": n, "sent_len": sl, "sent_sha": hs.hexdigest(), "recv_len": rl,
         "recv_sha": hr.hexdigest(), "local_ports": [s.getsockname()[1] for s in socks]})

def udp_fanout(host, port, count):
    dest = (host, int(port))
    socks = []
    for i in range(int(count)):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5.0)
        p = payload(99, i, 100)
        s.sendto(p, dest)
        try:
            data, frm = s.recvfrom(2048)
        except OSError as e:
            return out({"ok": False, "index": i, "error": str(e) or "timed out"})
        if data != p or frm != dest:
            return out({"ok": False, "index": i, "error": "wrong echo"})
        socks.append(s)
    out({"ok": True, "count": len(socks)})

def udp_timeline(host, port, duration, actions):
    dest = (host, int(port))
    acts = sorted(json.loads(actions), key=lambda a: a[0])
    socks = {}
    for _, name, _ in acts:
        if name not in socks:
            socks[name] = udp_socket()
            socks[name].setblocking(False)
    by_fd = {s.fileno(): name for name, s in socks.items()}
    t0 = time.monotonic()
    end = t0 + float(duration)
    ai = 0
    while True:
        now = time.monotonic()
        while ai < len(acts) and now - t0 >= acts[ai][0]:
            _, name, text = acts[ai]
            socks[name].sendto(text.encode(), dest)
            out({"sent": text, "sock": name, "t_ms": ms(t0)})
            ai += 1
        if now >= end:
            break
        nxt = end if ai >= len(acts) else min(end, t0 + acts[ai][0])
        r, _, _ = select.select(list(socks.values()), [], [], max(0.0, nxt - now))
        for s in r:
            name = by_fd[s.fileno()]
            try:
                data, frm = s.recvfrom(1 << 16)
            except OSError as e:
                out({"sock": name, "errno": e.errno, "error": str(e), "t_ms": ms(t0)})
                continue
            out({"sock": name, "recv": data.decode("latin-1"), "from": fmt(frm), "t_ms": ms(t0)})
    out({"done": True, "ports": {k: v.getsockname()[1] for k, v in socks.items()}})

# ---- ICMP

def icmp_watch(family, idle):
    if family == "6":
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    out({"ready": True})
    s.settimeout(float(idle))
    while True:
        try:
            data, frm = s.recvfrom(65536)
        except socket.timeout:
            return out({"idle": True})
        if family == "6":
            if len(data) >= 8 and data[0] == 128:
                ident, seq = struct.unpack("!HH", data[4:8])
                out({"from": frm[0], "id": ident, "seq": seq})
        else:
            ihl = (data[0] & 15) * 4
            if len(data) >= ihl + 8 and data[ihl] == 8:
                ident, seq = struct.unpack("!HH", data[ihl + 4:ihl + 8])
                out({"from": socket.inet_ntoa(data[12:16]), "id": ident, "seq": seq})

{"tcp_client": tcp_client, "tcp_many": tcp_many, "tcp_server": tcp_server,
 "udp_server": udp_server, "udp_echo": udp_echo, "udp_error": udp_error,
 "udp_oversize": udp_oversize, "udp_burst": udp_burst, "udp_multi": udp_multi,
 "udp_fanout": udp_fanout, "udp_timeline": udp_timeline,
 "icmp_watch": icmp_watch}[MODE](*sys.argv[2:])
"#;

/// The I/O timeout (seconds) the host-facing TCP helpers below give [`PY_NET`]: a bulk
/// exchange through a userspace stack on shared cores may pause that long.
const BULK_IO_TIMEOUT_S: &str = "120";

/// `["-c", PY_NET, mode, args...]`: the arguments after [`PYTHON`] (for [`NetnsFixture::exec`]).
pub fn py_net_args(mode: &str, args: &[String]) -> Vec<String> {
    let mut v = vec!["-c".to_string(), PY_NET.to_string(), mode.to_string()];
    v.extend(args.iter().cloned());
    v
}

/// `[PYTHON, "-c", PY_NET, mode, args...]`: a whole argv.
pub fn py_net(mode: &str, args: &[String]) -> Vec<String> {
    with_python(py_net_args(mode, args))
}

/// Arguments of `python3` for one client exchange (`tcp_client`, 120 s I/O timeout).
pub fn py_client(
    host: &str,
    port: u16,
    send_len: u64,
    seed: u64,
    connect_timeout_s: u32,
) -> Vec<String> {
    py_net_args(
        "tcp_client",
        &[
            s(host),
            s(port),
            s(send_len),
            s(seed),
            s(connect_timeout_s),
            s(BULK_IO_TIMEOUT_S),
        ],
    )
}

/// Arguments of `python3` for `count` sequential exchanges (`tcp_many`, 120 s I/O timeout).
pub fn py_many(host: &str, port: u16, count: u32, send_len: u64, seed: u64) -> Vec<String> {
    py_net_args(
        "tcp_many",
        &[
            s(host),
            s(port),
            s(count),
            s(send_len),
            s(seed),
            s(BULK_IO_TIMEOUT_S),
        ],
    )
}

/// Arguments of `python3` for a one-connection server (`tcp_server`, 120 s I/O timeout).
pub fn py_server(bind_ip: &str, reply_len: u64, reply_seed: u64) -> Vec<String> {
    py_net_args(
        "tcp_server",
        &[
            s(bind_ip),
            s(reply_len),
            s(reply_seed),
            s(1),
            s(BULK_IO_TIMEOUT_S),
        ],
    )
}

/// A [`PY_NET`] server (`tcp_server`, `udp_server`, `icmp_watch`) inside `ns`, or on the host
/// when `ns` is None.
pub fn py_net_child(
    what: &str,
    ns: Option<&NetnsFixture>,
    mode: &str,
    args: &[String],
) -> LineChild {
    let mut cmd = match ns {
        Some(ns) => ns.exec(PYTHON, &py_net_args(mode, args)),
        None => {
            let mut c = Command::new(PYTHON);
            c.args(py_net_args(mode, args));
            c
        }
    };
    LineChild::spawn(what, &mut cmd)
}

/// [`py_net_child`] for a server (`tcp_server`, `udp_server`) that prints its port first;
/// returns it with that port (waiting 30 s at most).
pub fn py_net_server(
    what: &str,
    ns: Option<&NetnsFixture>,
    mode: &str,
    args: &[String],
) -> (LineChild, u16) {
    let mut c = py_net_child(what, ns, mode, args);
    let port = c.wait_port(Duration::from_secs(30));
    (c, port)
}

/// Waits (at most `deadline`) for a [`PY_NET`] `udp_server`'s reports of the datagrams of `seed`
/// and `sizes` and checks them: one each, in order, each of its size and content, each from
/// `from`. `at` names the server in messages. Returns the digest of those datagrams.
pub fn assert_udp_server_got(
    server: &mut LineChild,
    at: &str,
    from: IpAddr,
    (seed, sizes): (u64, &[usize]),
    deadline: Duration,
) -> Digest {
    let got = server.wait_json_n(
        &format!("a report per datagram at {at}"),
        sizes.len(),
        deadline,
        |j| j.has("from"),
    );
    assert_eq!(got.len(), sizes.len(), "datagrams at {at}: {got:?}");
    let mut h = Hasher::default();
    for (i, (j, &size)) in got.iter().zip(sizes).enumerate() {
        let p = py_net_payload(seed, i as u64, size);
        assert_eq!(j.u64("len"), size as u64, "datagram {i} at {at}: {j:?}");
        assert_eq!(j.str("sha"), Digest::of(&p).sha, "datagram {i} at {at}");
        assert_eq!(
            j.str("from").parse::<IpAddr>().ok(),
            Some(from),
            "source address of datagram {i} at {at}: {j:?}"
        );
        h.update(&p);
    }
    h.finish()
}
