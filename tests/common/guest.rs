//! Guest programs: argv builders for scripts and checks of what guest tools print.

use super::*;

/// `[PYTHON, "-c", script, args...]`.
pub fn python_script(script: &str, args: &[String]) -> Vec<String> {
    let mut v = vec![PYTHON.to_string(), "-c".to_string(), script.to_string()];
    v.extend(args.iter().cloned());
    v
}

/// `[PYTHON, args...]`: e.g. the arguments of [`py_client`] as a whole argv.
pub fn with_python(args: Vec<String>) -> Vec<String> {
    let mut v = vec![PYTHON.to_string()];
    v.extend(args);
    v
}

/// `["/bin/sh", "-c", script, "sh", args...]`: a shell script with positional arguments.
pub fn sh_script(script: &str, args: &[String]) -> Vec<String> {
    let mut v = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        script.to_string(),
        "sh".to_string(),
    ];
    v.extend(args.iter().cloned());
    v
}

/// Shell functions for guest scripts (see [`guest_sh`]): `py MODE ARGS...` runs [`PY_NET`];
/// `wait_slaac` waits (15 s deadline) until tap0 has a global fd00:: address that is no longer
/// tentative and a default route via fe80::2, then prints `{"mode":"slaac","addr":...}`; on
/// timeout it says what it waited for (with the addresses and routes) and exits 97.
pub const GUEST_SH_PRELUDE: &str = r#"PY=$1; NET=$2; shift 2
py() { "$PY" -c "$NET" "$@"; }
wait_slaac() {
  end=$(( $(date +%s) + 15 ))
  while :; do
    a=$(ip -6 -o addr show dev tap0 scope global 2>/dev/null | grep ' inet6 fd00::' | grep -v tentative | head -n 1)
    r=$(ip -6 route show default 2>/dev/null | grep 'via fe80::2 dev tap0')
    if [ -n "$a" ] && [ -n "$r" ]; then
      echo "{\"mode\":\"slaac\",\"addr\":\"$(echo "$a" | awk '{print $4}')\"}"
      return 0
    fi
    if [ "$(date +%s)" -ge "$end" ]; then
      echo "timed out after 15 s waiting for SLAAC: a non-tentative fd00::/64 address on tap0 and a default route via fe80::2" >&2
      ip -6 addr show >&2
      ip -6 route show >&2
      exit 97
    fi
    sleep 0.05
  done
}
"#;

/// `["/bin/sh", "-c", PRELUDE + body, "sh", PYTHON, PY_NET, args...]`: a guest script with
/// [`GUEST_SH_PRELUDE`]'s `py` and `wait_slaac`; `args` are `$1...` inside `body`.
pub fn guest_sh(body: &str, args: &[String]) -> Vec<String> {
    let mut v = vec![PYTHON.to_string(), PY_NET.to_string()];
    v.extend(args.iter().cloned());
    sh_script(&format!("{GUEST_SH_PRELUDE}{body}"), &v)
}

/// Checks an iputils ping transcript: one reply from `from` for each icmp_seq 1..=count, each of
/// `bytes` bytes, no duplicates or errors, and the summary line.
pub fn assert_ping_transcript(out: &str, from: &str, count: u32, bytes: u32) {
    for seq in 1..=count {
        let prefix = format!("{bytes} bytes from {from}: icmp_seq={seq} ");
        let n = out.lines().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(
            n, 1,
            "expected one reply line starting {prefix:?}, found {n}:\n{out}"
        );
    }
    let replies = out.lines().filter(|l| l.contains(" bytes from ")).count();
    assert_eq!(replies, count as usize, "reply lines:\n{out}");
    for bad in ["DUP!", "wrong data", "Unreachable", "Time to live exceeded"] {
        assert!(!out.contains(bad), "ping reported {bad:?}:\n{out}");
    }
    assert!(
        out.contains(&format!(
            "{count} packets transmitted, {count} received, 0% packet loss"
        )),
        "ping summary:\n{out}"
    );
}

/// `curl` posting its stdin to `url` (failing on an HTTP error, 60 s at most), as a guest
/// program.
pub fn curl_post(url: &str) -> Vec<String> {
    [
        "curl",
        "-sS",
        "--fail",
        "--noproxy",
        "*",
        "--max-time",
        "60",
        "--data-binary",
        "@-",
        url,
    ]
    .map(String::from)
    .to_vec()
}

/// `x.to_string()`, short for building argument lists.
pub fn s(x: impl ToString) -> String {
    x.to_string()
}

/// `1,2,3`: datagram sizes as [`PY_NET`]'s UDP modes take them.
pub fn join_sizes(sizes: &[usize]) -> String {
    sizes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
