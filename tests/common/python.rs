//! The Python helper run inside namespaces (and on the host), and the argv that runs it.

use std::process::Command;

use super::*;

/// Run as `python3 -c PY_HELPER MODE ARGS...`; prints one JSON object per line.
///
/// - `client HOST PORT SEND_LEN SEED [CONNECT_TIMEOUT]`: connect, send the stream, shut down the
///   write side, read to EOF. Prints `{"ok":true,"sent_len","sent_sha","recv_len","recv_sha",
///   "connect_ms","elapsed_ms"}` or `{"ok":false,"stage":"connect"|"data","errno","error",
///   "elapsed_ms"}` (errno -1 for a timeout).
/// - `many HOST PORT COUNT SEND_LEN SEED`: COUNT sequential connections doing the same; prints
///   totals with the digests of everything sent and received back to back, plus `"conns"`.
/// - `server BIND_IP REPLY_LEN REPLY_SEED`: listen on port 0, print `{"port":P}`, serve one
///   connection like the host test server, print `{"ok":true,"recv_len","recv_sha","sent_len",
///   "sent_sha"}`.
pub const PY_HELPER: &str = r#"
import hashlib, json, socket, sys, time

BLOCK = 1 << 20
IO_TIMEOUT = 120.0
_blocks = {}

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
    sent = 0
    k = 0
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

def out(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()

def ms(t0):
    return int((time.monotonic() - t0) * 1000)

def fail(stage, e, t0, **extra):
    d = {"ok": False, "stage": stage, "errno": e.errno if getattr(e, "errno", None) is not None else -1,
         "error": str(e) or type(e).__name__, "elapsed_ms": ms(t0)}
    d.update(extra)
    out(d)

def connect(host, port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    s.settimeout(IO_TIMEOUT)
    return s

def exchange(s, seed, n, hs, hr):
    sent = send_stream(s, seed, n, hs)
    s.shutdown(socket.SHUT_WR)
    recvd = recv_stream(s, hr)
    s.close()
    return sent, recvd

def client(host, port, n, seed, timeout=30.0):
    t0 = time.monotonic()
    try:
        s = connect(host, int(port), float(timeout))
    except OSError as e:
        return fail("connect", e, t0)
    cms = ms(t0)
    hs, hr = hashlib.sha256(), hashlib.sha256()
    try:
        sent, recvd = exchange(s, int(seed), int(n), hs, hr)
    except OSError as e:
        return fail("data", e, t0)
    out({"ok": True, "sent_len": sent, "sent_sha": hs.hexdigest(), "recv_len": recvd,
         "recv_sha": hr.hexdigest(), "connect_ms": cms, "elapsed_ms": ms(t0)})

def many(host, port, count, n, seed):
    t0 = time.monotonic()
    hs, hr = hashlib.sha256(), hashlib.sha256()
    tsent = trecv = 0
    for i in range(int(count)):
        stage = "connect"
        try:
            s = connect(host, int(port), 10.0)
            stage = "data"
            sent, recvd = exchange(s, int(seed), int(n), hs, hr)
        except OSError as e:
            return fail(stage, e, t0, conn=i)
        tsent += sent
        trecv += recvd
    out({"ok": True, "conns": int(count), "sent_len": tsent, "sent_sha": hs.hexdigest(),
         "recv_len": trecv, "recv_sha": hr.hexdigest(), "elapsed_ms": ms(t0)})

def server(bind_ip, n, seed):
    t0 = time.monotonic()
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind((bind_ip, 0))
    ls.listen(1)
    out({"port": ls.getsockname()[1]})
    ls.settimeout(IO_TIMEOUT)
    try:
        c, _ = ls.accept()
        c.settimeout(IO_TIMEOUT)
        hr, hs = hashlib.sha256(), hashlib.sha256()
        recvd = recv_stream(c, hr)
        sent = send_stream(c, int(seed), int(n), hs)
        c.shutdown(socket.SHUT_WR)
        c.close()
    except OSError as e:
        return fail("server", e, t0)
    out({"ok": True, "recv_len": recvd, "recv_sha": hr.hexdigest(), "sent_len": sent,
         "sent_sha": hs.hexdigest(), "elapsed_ms": ms(t0)})

{"client": client, "many": many, "server": server}[sys.argv[1]](*sys.argv[2:])
"#;

/// `["-c", PY_HELPER, mode, args...]`: the arguments after [`PYTHON`].
pub fn py_args(mode: &str, args: &[String]) -> Vec<String> {
    let mut v = vec!["-c".to_string(), PY_HELPER.to_string(), mode.to_string()];
    v.extend(args.iter().cloned());
    v
}

/// Arguments of `python3` for one client exchange.
pub fn py_client(
    host: &str,
    port: u16,
    send_len: u64,
    seed: u64,
    connect_timeout_s: u32,
) -> Vec<String> {
    py_args(
        "client",
        &[
            host.into(),
            port.to_string(),
            send_len.to_string(),
            seed.to_string(),
            connect_timeout_s.to_string(),
        ],
    )
}

/// Arguments of `python3` for `count` sequential exchanges.
pub fn py_many(host: &str, port: u16, count: u32, send_len: u64, seed: u64) -> Vec<String> {
    py_args(
        "many",
        &[
            host.into(),
            port.to_string(),
            count.to_string(),
            send_len.to_string(),
            seed.to_string(),
        ],
    )
}

/// Arguments of `python3` for a one-connection server.
pub fn py_server(bind_ip: &str, reply_len: u64, reply_seed: u64) -> Vec<String> {
    py_args(
        "server",
        &[
            bind_ip.into(),
            reply_len.to_string(),
            reply_seed.to_string(),
        ],
    )
}

/// The python helper with `PYTHON` as argv\[0\]: `[PYTHON, "-c", ...]`.
pub fn with_python(args: Vec<String>) -> Vec<String> {
    let mut v = vec![PYTHON.to_string()];
    v.extend(args);
    v
}

/// The family-agnostic helper run inside namespaces (and on the host): `python3 -c PY_NET MODE
/// ARGS...`. Every line it prints is a JSON object with `"mode"`. Addresses are IPv6 when they
/// contain `:`. TCP streams are the pattern streams of the module doc; UDP payloads are
/// `sha256("tapsplice-udp:{seed}:{i}")` repeated, as in the UDP tests.
///
/// - `tcp_client HOST PORT SEND_LEN SEED TIMEOUT`: connect, send the stream, shut down the write
///   side, read to EOF: `{"ok":true,"local","sent_len","sent_sha","recv_len","recv_sha",
///   "connect_ms"}` or `{"ok":false,"stage":"connect"|"data","errno","error","elapsed_ms"}`.
/// - `tcp_server BIND_IP REPLY_LEN REPLY_SEED COUNT`: prints `{"port"}`, then serves COUNT
///   connections one after the other (read to EOF, send the reply stream, close), printing for
///   each `{"ok":true,"peer","recv_len","recv_sha","sent_len","sent_sha"}`: `peer` is the
///   client's source address.
/// - `udp_server BIND_IP IDLE`: prints `{"port"}`, echoes every datagram and prints
///   `{"from","from_port","len","sha"}` for each, until IDLE seconds pass without one.
/// - `udp_echo HOST PORT SEED SIZES TIMEOUT`: one socket sends datagram `i` of each size (comma
///   list) and waits for its byte-identical echo from HOST:PORT: `{"ok":true,"count","local",
///   "sent_len","sent_sha","recv_len","recv_sha"}` or `{"ok":false,"stage",...}`.
/// - `udp_error HOST PORT TIMEOUT [RECVERR]`: a connected socket sends one datagram and reads:
///   `{"result":"error","errno",...}`, `{"result":"timeout"}` or `{"result":"data"}`. With
///   RECVERR `1` it sets IP_RECVERR / IPV6_RECVERR (the kernel reports "soft" ICMP errors such as
///   net unreachable only then) and adds the ICMP error's `ee_origin`, `ee_type`, `ee_code`.
/// - `icmp_watch 4|6 IDLE`: a raw ICMP (ICMPv6) socket; prints `{"ready":true}`, then
///   `{"from","id","seq"}` for every echo request that arrives, until IDLE seconds of silence.
pub const PY_NET: &str = r#"
import hashlib, json, socket, struct, sys, time

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

def payload(seed, i, size):
    h = hashlib.sha256(b"tapsplice-udp:%d:%d" % (int(seed), int(i))).digest()
    return (h * (size // 32 + 1))[:size]

def same_addr(a, b, f):
    return socket.inet_pton(f, a) == socket.inet_pton(f, b)

def tcp_client(host, port, n, seed, timeout):
    t0 = time.monotonic()
    s = socket.socket(fam(host), socket.SOCK_STREAM)
    s.settimeout(float(timeout))
    try:
        s.connect((host, int(port)))
    except OSError as e:
        return out(dict(ok=False, stage="connect", elapsed_ms=ms(t0), **err(e)))
    cms = ms(t0)
    s.settimeout(IO_TIMEOUT)
    local = s.getsockname()[0]
    hs, hr = hashlib.sha256(), hashlib.sha256()
    try:
        sent = send_stream(s, int(seed), int(n), hs)
        s.shutdown(socket.SHUT_WR)
        recvd = recv_stream(s, hr)
        s.close()
    except OSError as e:
        return out(dict(ok=False, stage="data", elapsed_ms=ms(t0), **err(e)))
    out({"ok": True, "local": local, "sent_len": sent, "sent_sha": hs.hexdigest(),
         "recv_len": recvd, "recv_sha": hr.hexdigest(), "connect_ms": cms, "elapsed_ms": ms(t0)})

def tcp_server(bind_ip, n, seed, count):
    ls = socket.socket(fam(bind_ip), socket.SOCK_STREAM)
    ls.bind((bind_ip, 0))
    ls.listen(16)
    out({"port": ls.getsockname()[1]})
    ls.settimeout(IO_TIMEOUT)
    for _ in range(int(count)):
        t0 = time.monotonic()
        try:
            c, peer = ls.accept()
            c.settimeout(IO_TIMEOUT)
            hr, hs = hashlib.sha256(), hashlib.sha256()
            recvd = recv_stream(c, hr)
            sent = send_stream(c, int(seed), int(n), hs)
            c.shutdown(socket.SHUT_WR)
            c.close()
        except OSError as e:
            out(dict(ok=False, stage="serve", elapsed_ms=ms(t0), **err(e)))
            continue
        out({"ok": True, "peer": peer[0], "peer_port": peer[1], "recv_len": recvd,
             "recv_sha": hr.hexdigest(), "sent_len": sent, "sent_sha": hs.hexdigest(),
             "elapsed_ms": ms(t0)})

def udp_server(bind_ip, idle):
    s = socket.socket(fam(bind_ip), socket.SOCK_DGRAM)
    s.bind((bind_ip, 0))
    out({"port": s.getsockname()[1]})
    s.settimeout(float(idle))
    while True:
        try:
            data, frm = s.recvfrom(1 << 17)
        except socket.timeout:
            return out({"idle": True})
        s.sendto(data, frm)
        out({"from": frm[0], "from_port": frm[1], "len": len(data),
             "sha": hashlib.sha256(data).hexdigest()})

def udp_echo(host, port, seed, sizes, timeout):
    f = fam(host)
    dest = (host, int(port))
    s = socket.socket(f, socket.SOCK_DGRAM)
    s.settimeout(float(timeout))
    hs, hr = hashlib.sha256(), hashlib.sha256()
    sl = rl = n = 0
    t0 = time.monotonic()
    for i, size in enumerate(int(x) for x in sizes.split(",")):
        p = payload(seed, i, size)
        try:
            s.sendto(p, dest)
        except OSError as e:
            return out(dict(ok=False, stage="send", index=i, size=size, **err(e)))
        hs.update(p); sl += len(p)
        try:
            data, frm = s.recvfrom(1 << 17)
        except OSError as e:
            return out(dict(ok=False, stage="recv", index=i, size=size, **err(e)))
        hr.update(data); rl += len(data); n += 1
        if frm[1] != dest[1] or not same_addr(frm[0], host, f) or data != p:
            return out({"ok": False, "stage": "check", "index": i, "size": size, "from": frm[0],
                        "from_port": frm[1], "got_len": len(data), "equal": data == p})
    out({"ok": True, "count": n, "local": s.getsockname()[0], "sent_len": sl,
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
        except OSError as e:
            r["errqueue_error"] = str(e)
    out(r)

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

{"tcp_client": tcp_client, "tcp_server": tcp_server, "udp_server": udp_server,
 "udp_echo": udp_echo, "udp_error": udp_error, "icmp_watch": icmp_watch}[MODE](*sys.argv[2:])
"#;

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
