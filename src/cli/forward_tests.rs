//! The forwarding options: `-a/--api-socket`, `--forward-path`, and `run -p/--publish`.

use super::tests::{argv, attach};
use super::*;
use crate::forward::Proto;

fn run(args: &[&str]) -> RunOptions {
    let args: Vec<&str> = std::iter::once("run").chain(args.iter().copied()).collect();
    match parse(&argv(&args)) {
        Ok(Command::Run(opts)) => opts,
        other => panic!("{args:?}: expected run options, got {other:?}"),
    }
}

#[test]
fn api_socket_in_every_form_and_any_length() {
    for args in [
        &["-a", "/tmp/s.sock", "1", "tap0"][..],
        &["-a/tmp/s.sock", "1", "tap0"],
        &["--api-socket=/tmp/s.sock", "1", "tap0"],
        &["--api-socket", "/tmp/s.sock", "1", "tap0"],
        &["--api=/tmp/s.sock", "1", "tap0"],
    ] {
        assert_eq!(
            attach(args).api_socket,
            Some(PathBuf::from("/tmp/s.sock")),
            "{args:?}"
        );
    }
    // The length is checked when the socket is made, as slirp4netns does.
    let long = format!("/tmp/{}", "a".repeat(200));
    assert_eq!(
        attach(&["-a", &long, "1", "tap0"]).api_socket,
        Some(PathBuf::from(&long))
    );
    assert_eq!(
        run(&["-a", "/tmp/r.sock", "true"]).api_socket,
        Some(PathBuf::from("/tmp/r.sock"))
    );
}

#[test]
fn forward_path_values() {
    assert_eq!(attach(&["1", "tap0"]).forward_path, ForwardPath::Auto);
    assert_eq!(
        attach(&["--forward-path=stack", "1", "tap0"]).forward_path,
        ForwardPath::Stack
    );
    assert_eq!(
        run(&["--forward-path", "splice", "true"]).forward_path,
        ForwardPath::Splice
    );
    let err = parse(&argv(&["--forward-path=fast", "1", "tap0"])).unwrap_err();
    assert_eq!(
        err.message,
        "--forward-path must be one of \"auto\", \"stack\" or \"splice\""
    );
}

#[test]
fn run_publish_is_repeatable_and_run_only() {
    let opts = run(&[
        "-p",
        "8080:80",
        "--publish=127.0.0.1:5300-5301:53-54/udp",
        "-p[::1]:9000:90",
        "sh",
    ]);
    assert_eq!(opts.publish.len(), 3);
    assert_eq!(opts.publish[1].proto, Proto::Udp);
    assert_eq!(opts.publish[1].host_ports, 5300..=5301);
    assert_eq!(opts.command, ["sh"]);
    let err = parse(&argv(&["run", "-p", "80", "true"])).unwrap_err();
    assert_eq!(
        err.message,
        "invalid port forward \"80\": expected [ADDR:]HOSTPORT:GUESTPORT"
    );
    // slirp4netns has no -p: in its mode it is an unknown option.
    let err = parse(&argv(&["-p", "8080:80", "1", "tap0"])).unwrap_err();
    assert_eq!(err.message, "tapsplice: invalid option -- 'p'");
}

#[test]
fn help_lines_for_forwarding() {
    let main = usage("tapsplice");
    assert!(main.contains("-a, --api-socket=PATH    specify API socket path\n"));
    assert!(main.contains("--forward-path=MODE"));
    assert!(!main.contains("--publish"));
    let run_help = run_usage("tapsplice");
    assert!(run_help.contains("-p, --publish=SPEC"));
    assert!(run_help.contains("-a, --api-socket=PATH"));
}
