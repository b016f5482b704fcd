//! The slirp4netns API socket, byte for byte: every reply rootlesskit and other clients parse,
//! every error case of the contract (each changing nothing), ids, many clients at once, clients
//! that misbehave, the socket file's life (made before ready, removed on every exit), its path
//! limit at run time, privileged ports for an unprivileged user, and descriptors over 200 forwards.

mod common;
mod fwd_common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use fwd_common::*;
use nix::sys::signal::Signal;

const LIST: &str = r#"{"execute":"list_hostfwd"}"#;

fn entry(id: u64, proto: &str, host_addr: &str, host_port: u16, guest_port: u16) -> String {
    format!(
        r#"{{"id":{id},"proto":"{proto}","host_addr":"{host_addr}","host_port":{host_port},"guest_addr":"{GUEST_IP}","guest_port":{guest_port}}}"#
    )
}

/// `list_hostfwd`'s reply for these entries: under `return` and at the top level.
fn list_reply(entries: &[String]) -> String {
    let e = entries.join(",");
    format!(r#"{{"return":{{"entries":[{e}]}},"entries":[{e}]}}"#)
}

#[test]
fn add_list_remove_round_trip_byte_exact() {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, &[]);
    assert_eq!(inst.request(LIST), list_reply(&[]));
    let p1 = free_port("127.0.0.1");
    assert_eq!(
        inst.request(&add_request("tcp", "127.0.0.1", p1, 80)),
        r#"{"return":{"id":1}}"#
    );
    // rootlesskit's form: empty addresses, a trailing newline (Go's json.Encoder).
    let p2 = free_port("0.0.0.0");
    let rk = format!(
        "{{\"execute\":\"add_hostfwd\",\"arguments\":{{\"proto\":\"udp\",\"host_addr\":\"\",\"host_port\":{p2},\"guest_addr\":\"\",\"guest_port\":53}}}}\n"
    );
    assert_eq!(inst.request(&rk), r#"{"return":{"id":2}}"#);
    let p3 = free_port("::1");
    assert_eq!(
        inst.request(&add_request("tcp", "::1", p3, 8080)),
        r#"{"return":{"id":3}}"#
    );
    let e1 = entry(1, "tcp", "127.0.0.1", p1, 80);
    let e2 = entry(2, "udp", "0.0.0.0", p2, 53);
    let e3 = entry(3, "tcp", "::1", p3, 8080);
    assert_eq!(
        inst.request(LIST),
        list_reply(&[e1.clone(), e2.clone(), e3.clone()])
    );
    assert_eq!(
        inst.request(r#"{"execute":"remove_hostfwd","arguments":{"id":2}}"#),
        r#"{"return":{}}"#
    );
    assert_eq!(inst.request(LIST), list_reply(&[e1, e3]));
    // The port is free again; ids are never reused.
    std::net::UdpSocket::bind(("0.0.0.0", p2)).expect("the removed forward's port is free");
    assert_eq!(
        inst.request(&add_request("tcp", "127.0.0.1", free_port("127.0.0.1"), 81)),
        r#"{"return":{"id":4}}"#
    );
}

#[test]
fn every_error_is_json_and_changes_nothing() {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, &[]);
    let kept = free_port("127.0.0.1");
    inst.add("tcp", "127.0.0.1", kept, 80);
    let before = inst.request(LIST);
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().port();
    let add = |args: &str| format!(r#"{{"execute":"add_hostfwd","arguments":{args}}}"#);
    let err = |desc: &str| format!(r#"{{"error":{{"desc":"{desc}"}}}}"#);
    let cases: Vec<(String, String)> = vec![
        (String::new(), err("bad request: cannot parse JSON")),
        (
            "{\"execute\":".into(),
            err("bad request: cannot parse JSON"),
        ),
        ("[1,2]".into(), err("bad request: json_object() failed")),
        ("{}".into(), err("bad request: no execute found")),
        (
            r#"{"execute":42}"#.into(),
            err("bad request: no execute found"),
        ),
        (
            r#"{"execute":"stats_hostfwd"}"#.into(),
            err("bad request: unknown execute"),
        ),
        (
            r#"{"execute":"add_hostfwd"}"#.into(),
            err("bad request: add_hostfwd: bad arguments.proto"),
        ),
        (
            add(r#"{"proto":"sctp","host_port":1,"guest_port":1}"#),
            err("bad request: add_hostfwd: bad arguments.proto"),
        ),
        (
            add(r#"{"proto":"tcp","host_addr":"127.0.0.256","host_port":1,"guest_port":1}"#),
            err("bad request: add_hostfwd: bad arguments.host_addr"),
        ),
        (
            add(r#"{"proto":"tcp","host_addr":"localhost","host_port":1,"guest_port":1}"#),
            err("bad request: add_hostfwd: bad arguments.host_addr"),
        ),
        (
            add(r#"{"proto":"tcp","host_port":0,"guest_port":1}"#),
            err("bad request: add_hostfwd: bad arguments.host_port"),
        ),
        (
            add(r#"{"proto":"tcp","host_port":70000,"guest_port":1}"#),
            err("bad request: add_hostfwd: bad arguments.host_port"),
        ),
        (
            add(r#"{"proto":"tcp","host_port":18081,"guest_addr":"10.0.2.1000","guest_port":1}"#),
            err("bad request: add_hostfwd: bad arguments.guest_addr"),
        ),
        (
            add(r#"{"proto":"tcp","host_port":18081,"guest_addr":"192.168.1.1","guest_port":1}"#),
            err("bad request: add_hostfwd: bad arguments.guest_addr"),
        ),
        (
            add(r#"{"proto":"tcp","host_port":18081}"#),
            err("bad request: add_hostfwd: bad arguments.guest_port"),
        ),
        (
            add_request("tcp", "127.0.0.1", busy, 80),
            err(&format!(
                "bad request: add_hostfwd: slirp_add_hostfwd failed: cannot listen on 127.0.0.1:{busy}/tcp: Address already in use"
            )),
        ),
        (
            add_request("tcp", "127.0.0.1", kept, 81),
            err(&format!(
                "bad request: add_hostfwd: slirp_add_hostfwd failed: cannot listen on 127.0.0.1:{kept}/tcp: Address already in use"
            )),
        ),
        (
            add_request("tcp", "192.0.2.1", 18082, 81),
            err(
                "bad request: add_hostfwd: slirp_add_hostfwd failed: cannot listen on 192.0.2.1:18082/tcp: Cannot assign requested address",
            ),
        ),
        (
            r#"{"execute":"remove_hostfwd","arguments":{"id":99}}"#.into(),
            err("bad request: remove_hostfwd: bad arguments.id"),
        ),
        (
            r#"{"execute":"remove_hostfwd","arguments":{"id":"1"}}"#.into(),
            err("bad request: remove_hostfwd: bad arguments.id"),
        ),
        (
            format!("{LIST}{}", " ".repeat(4096 - LIST.len())),
            err("bad request: too large message"),
        ),
    ];
    for (request, want) in &cases {
        assert_eq!(&inst.request(request), want, "request {request:?}");
        assert_eq!(inst.request(LIST), before, "after {request:?}");
    }
    // 4095 bytes is still a request.
    let padded = format!("{LIST}{}", " ".repeat(4095 - LIST.len()));
    assert_eq!(inst.request(&padded), before);
    drop(held);
}

#[test]
fn endless_request_gets_too_large_without_eof() {
    // `cat /dev/zero | nc -U SOCK`: the client never half-closes.
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, &[]);
    let mut s = UnixStream::connect(&inst.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let feeder = thread::spawn(move || {
        let zeros = [0u8; 4096];
        for _ in 0..1024 {
            if writer.write_all(&zeros).is_err() {
                return;
            }
        }
    });
    // The server closes with our unread bytes in its queue, so after the reply the socket
    // may end with ECONNRESET instead of EOF (slirp4netns does the same).
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match read_retrying(&mut s, &mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the reply: {e}"),
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&reply),
        r#"{"error":{"desc":"bad request: too large message"}}"#
    );
    feeder.join().unwrap();
    assert_eq!(
        inst.request(LIST),
        r#"{"return":{"entries":[]},"entries":[]}"#
    );
}

#[test]
fn request_without_half_close_is_answered() {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, &[]);
    let mut s = UnixStream::connect(&inst.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(LIST.as_bytes()).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("reply then EOF");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        r#"{"return":{"entries":[]},"entries":[]}"#
    );
}

#[test]
fn many_clients_at_once_while_data_flows_and_one_client_stalls() {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, &["--forward-path=stack"]);
    // A client that starts a request and never finishes it must not hold anyone up.
    let mut stalled = UnixStream::connect(&inst.api).unwrap();
    stalled.write_all(br#"{"execute":"#).unwrap();
    // Data through a forward at the same time.
    let len = 64 * MIB;
    let server = inst.guest(
        "tcp server in the guest",
        PYTHON,
        &py_tcp_server("0.0.0.0", 0, 1, len, 171),
    );
    let host_port = inst.add_tcp("127.0.0.1", server.port());
    let bulk = thread::spawn(move || {
        exchange(
            format!("127.0.0.1:{host_port}").parse().unwrap(),
            len,
            172,
            Duration::from_secs(120),
        )
    });
    let want = inst.request(LIST);
    let start = Instant::now();
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let api = inst.api.clone();
            thread::spawn(move || {
                if i % 2 == 0 {
                    String::from_utf8(api_exchange(&api, LIST.as_bytes())).unwrap()
                } else {
                    // Half of them do not half-close.
                    let mut s = UnixStream::connect(&api).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s.write_all(LIST.as_bytes()).unwrap();
                    let mut r = String::new();
                    s.read_to_string(&mut r).unwrap();
                    r
                }
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), want);
    }
    eprintln!(
        "100 concurrent API clients answered in {:?}",
        start.elapsed()
    );
    let ex = bulk
        .join()
        .unwrap()
        .expect("bulk transfer during the API burst");
    let (recv, sent) = server_digests(&server.next(SHORT));
    assert_eq!(ex.sent, recv);
    assert_eq!(ex.received, sent);
    assert_eq!(sent, pattern_digest(171, len));
    drop(stalled);
}

#[test]
fn two_hundred_forwards_added_and_removed_leave_no_descriptors() {
    let Some(bin) = prereqs(&[]) else { return };
    // The stack path: no splice helper filling its socket pool while the baseline is taken.
    let inst = Instance::start(&bin, &["--forward-path=stack"]);
    let baseline = inst.child.fd_count();
    let mut ids = Vec::new();
    for i in 0..200 {
        let proto = if i % 2 == 0 { "tcp" } else { "udp" };
        let port = free_port("127.0.0.1");
        ids.push(inst.add(proto, "127.0.0.1", port, 1000 + i));
    }
    assert_eq!(ids, (1..=200).collect::<Vec<u64>>());
    let with = inst.child.fd_count();
    assert!(
        with >= baseline + 200,
        "200 forwards should hold 200 sockets: {baseline} -> {with}"
    );
    for id in ids {
        inst.remove(id);
    }
    assert_eq!(inst.request(LIST), list_reply(&[]));
    let mut now = 0;
    wait_for(
        Duration::from_secs(10),
        &format!("descriptors back to {baseline} after removing 200 forwards"),
        || {
            now = inst.child.fd_count();
            now <= baseline
        },
    );
    eprintln!("fds: {baseline} -> {with} with 200 forwards -> {now}");
}

/// The binary with `-a PATH` on a fresh namespace, through `sh` so that fd 3 is a pipe to us:
/// (child, ready-fd reader, namespace).
fn spawn_with_api(
    bin: &std::path::Path,
    api: &std::path::Path,
    log: std::path::PathBuf,
) -> (Child, std::process::ChildStdout, NetnsFixture) {
    let ns = NetnsFixture::new();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"exec 3>&1 4<&0 1>&2 0</dev/null; exec "$@""#)
        .arg("sh")
        .arg(bin)
        .args(["-c", "-r", "3", "-e", "4", "--api-socket"])
        .arg(api)
        .args(["--netns-type=path", &ns.path(), "tap0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = Child::spawn_logged("tapsplice with an API socket", &mut cmd, log);
    let ready = child.inner().stdout.take().expect("stdout pipe");
    (child, ready, ns)
}

#[test]
fn socket_path_of_108_bytes_fails_at_run_time_before_ready() {
    let Some(bin) = prereqs(&[]) else { return };
    let dir = TempDir::new("tsapilen");
    let mut path = dir.path().to_string_lossy().into_owned() + "/";
    while path.len() < 108 - ".sock".len() {
        path.push('a');
    }
    path.push_str(".sock");
    assert_eq!(path.len(), 108);
    let (mut child, ready, _ns) = spawn_with_api(&bin, path.as_ref(), dir.join("log"));
    let got = read_some_deadline("EOF on the ready fd", ready, 1, Duration::from_secs(15));
    assert!(
        got.is_empty(),
        "ready fd written despite the bad path: {got:?}"
    );
    let status = child.wait_deadline(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", child.log());
    assert!(
        child
            .log()
            .lines()
            .any(|l| l == "the specified API socket path is too long (>= 108)"),
        "stderr:\n{}",
        child.log()
    );
    assert!(!std::path::Path::new(&path).exists());
}

#[test]
fn socket_path_of_107_bytes_works() {
    let Some(bin) = prereqs(&[]) else { return };
    let dir = TempDir::new("tsapilen");
    let mut path = dir.path().to_string_lossy().into_owned() + "/";
    while path.len() < 107 - ".sock".len() {
        path.push('a');
    }
    path.push_str(".sock");
    assert_eq!(path.len(), 107);
    let (_child, ready, _ns) = spawn_with_api(&bin, path.as_ref(), dir.join("log"));
    let got = read_some_deadline("\"1\" on the ready fd", ready, 1, Duration::from_secs(15));
    assert_eq!(got, b"1");
    assert_eq!(
        String::from_utf8(api_exchange(path.as_ref(), LIST.as_bytes())).unwrap(),
        list_reply(&[])
    );
}

#[test]
fn socket_file_is_removed_on_exit_fd_and_on_sigterm() {
    let Some(bin) = prereqs(&[]) else { return };
    for how in ["exit fd", "SIGTERM"] {
        let dir = TempDir::new("tsapiexit");
        let api = dir.join("api.sock");
        let (mut child, ready, _ns) = spawn_with_api(&bin, &api, dir.join("log"));
        let got = read_some_deadline("\"1\" on the ready fd", ready, 1, Duration::from_secs(15));
        assert_eq!(got, b"1", "{}", child.log());
        assert!(api.exists(), "no socket file while running");
        match how {
            "exit fd" => drop(child.inner().stdin.take()),
            _ => child.signal(Signal::SIGTERM),
        }
        let status = child.wait_deadline(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "after {how}: {}", child.log());
        assert!(!api.exists(), "socket file left behind after {how}");
    }
}

#[test]
fn privileged_port_for_an_unprivileged_user_names_the_sysctl() {
    let Some(env) = RootlessEnv::new(&["newuidmap"]) else {
        return;
    };
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .expect("read net.ipv4.ip_unprivileged_port_start")
        .trim()
        .parse()
        .expect("a port number");
    if start <= 1 {
        skip_or_fail(&format!(
            "net.ipv4.ip_unprivileged_port_start is {start}: every port is unprivileged here"
        ));
        return;
    }
    let port = start - 1;
    let api = env.run_dir().join("api.sock");
    let mut cmd = env.as_test_user(&env.bin);
    cmd.arg("run")
        .arg("--api-socket")
        .arg(&api)
        .args(["--", "sleep", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let _child = Child::spawn_logged(
        "tapsplice run as the test user",
        &mut cmd,
        env.dir.join("log"),
    );
    wait_for(SHORT, "the API socket of the unprivileged instance", || {
        UnixStream::connect(&api).is_ok()
    });
    let reply = String::from_utf8(api_exchange(
        &api,
        add_request("tcp", "0.0.0.0", port, 80).as_bytes(),
    ))
    .unwrap();
    assert_eq!(
        reply,
        format!(
            r#"{{"error":{{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed: cannot listen on 0.0.0.0:{port}/tcp: Permission denied (ports below net.ipv4.ip_unprivileged_port_start={start} need privilege: lower that sysctl or grant CAP_NET_BIND_SERVICE)"}}}}"#
        )
    );
    assert_eq!(
        String::from_utf8(api_exchange(&api, LIST.as_bytes())).unwrap(),
        list_reply(&[])
    );
    // An unprivileged port works for the same user.
    let free = free_port("127.0.0.1");
    assert_eq!(
        String::from_utf8(api_exchange(
            &api,
            add_request("tcp", "127.0.0.1", free, 80).as_bytes()
        ))
        .unwrap(),
        r#"{"return":{"id":1}}"#
    );
}
