//! The parser against getopt_long's behaviour, as slirp4netns 1.2.0 shows it.

use super::*;

pub(super) fn argv(args: &[&str]) -> Vec<String> {
    std::iter::once("tapsplice")
        .chain(args.iter().copied())
        .map(String::from)
        .collect()
}

pub(super) fn attach(args: &[&str]) -> AttachOptions {
    match parse(&argv(args)) {
        Ok(Command::Attach(opts)) => opts,
        other => panic!("{args:?}: expected attach options, got {other:?}"),
    }
}

pub(super) fn error(args: &[&str]) -> CliError {
    match parse(&argv(args)) {
        Err(err) => err,
        other => panic!("{args:?}: expected an error, got {other:?}"),
    }
}

#[test]
fn rootlesskit_argv_parses() {
    let opts = attach(&[
        "--mtu",
        "65520",
        "-r",
        "3",
        "--disable-host-loopback",
        "3932",
        "tap0",
    ]);
    assert_eq!(opts.net.mtu, 65520);
    assert_eq!(opts.ready_fd, Some(3));
    assert!(opts.net.disable_host_loopback);
    assert_eq!(opts.target, Target::Pid(3932));
    assert_eq!(opts.tap_name, "tap0");
}

#[test]
fn value_forms_and_clusters_are_equivalent() {
    for args in [
        &["--mtu=9000", "-c", "1", "tap0"][..],
        &["--mtu", "9000", "-c", "1", "tap0"],
        &["-m9000", "-c", "1", "tap0"],
        &["-cm", "9000", "1", "tap0"],
        &["-cm9000", "1", "tap0"],
        &["1", "-c", "tap0", "--mt=9000"],
    ] {
        let opts = attach(args);
        assert_eq!(opts.net.mtu, 9000, "{args:?}");
        assert!(opts.configure, "{args:?}");
    }
}

#[test]
fn tapname_defaults_to_tap0() {
    assert_eq!(attach(&["42"]).tap_name, "tap0");
}

#[test]
fn double_dash_ends_options() {
    let opts = attach(&["--", "42", "tap1"]);
    assert_eq!(opts.tap_name, "tap1");
}

#[test]
fn getopt_texts_for_unknown_ambiguous_and_incomplete_options() {
    assert_eq!(
        error(&["--bogus", "1"]).message,
        "tapsplice: unrecognized option '--bogus'"
    );
    assert_eq!(
        error(&["-x", "1"]).message,
        "tapsplice: invalid option -- 'x'"
    );
    assert_eq!(
        error(&["1", "--mtu"]).message,
        "tapsplice: option '--mtu' requires an argument"
    );
    assert_eq!(
        error(&["--m=1500", "1"]).message,
        // slirp4netns lists '--mtu' '--macaddress'; tapsplice's '--metrics' joins them.
        "tapsplice: option '--m=1500' is ambiguous; possibilities: '--mtu' '--macaddress' '--metrics'"
    );
    assert!(error(&["--bogus", "1"]).usage.is_some());
}

#[test]
fn bad_numbers_carry_slirp4netns_texts() {
    for mtu in ["0", "65522", "abc", "1500x", "-1"] {
        let err = error(&["-m", mtu, "1", "tap0"]);
        assert_eq!(err.message, "MTU must be a positive integer (< 65522)");
        assert!(err.usage.is_some());
    }
    assert_eq!(
        error(&["-e", "abc", "1"]).message,
        "exit-fd must be a non-negative integer"
    );
    assert_eq!(
        error(&["--ready-fd=3x", "1"]).message,
        "ready-fd must be a non-negative integer"
    );
    assert_eq!(
        error(&["abc", "tap0"]).message,
        "PID must be a positive integer"
    );
    assert_eq!(
        error(&["0", "tap0"]).message,
        "PID must be a positive integer"
    );
}

#[test]
fn missing_target_prints_only_usage() {
    let err = error(&[]);
    assert_eq!(err.message, "");
    assert!(
        err.usage
            .unwrap()
            .starts_with("Usage: tapsplice [OPTION]... PID|PATH [TAPNAME]\n")
    );
}

#[test]
fn cidr_errors_have_no_usage() {
    let err = error(&["--cidr", "24", "1", "tap0"]);
    assert_eq!(err.message, "invalid CIDR: 24");
    assert_eq!(err.usage, None);
}

#[test]
fn help_stops_parsing_but_earlier_errors_win() {
    assert!(matches!(
        parse(&argv(&["--help", "--mtu", "0"])),
        Ok(Command::Help(_))
    ));
    assert!(parse(&argv(&["--mtu", "0", "--help"])).is_err());
    assert!(matches!(parse(&argv(&["-v"])), Ok(Command::Version)));
}

#[test]
fn help_advertises_exactly_the_working_options() {
    let help = usage("tapsplice");
    for present in [
        "--configure",
        "--exit-fd",
        "--ready-fd",
        "--mtu",
        "--cidr",
        "--disable-host-loopback",
        "--netns-type",
        "--userns-path",
        "--macaddress",
        "--outbound-addr",
        "--outbound-addr6",
        "--disable-dns",
        "--enable-ipv6",
        "--api-socket",
    ] {
        assert!(help.contains(present), "{present} missing");
    }
    // Each lands in the table with the issue that makes it work.
    for absent in ["--enable-sandbox", "--enable-seccomp"] {
        assert!(
            !help.contains(absent),
            "{absent} advertised before it works"
        );
    }
}

#[test]
fn macaddress_needs_configure() {
    assert_eq!(
        error(&["--macaddress=52:54:00:12:34:56", "1", "tap0"]).message,
        "--macaddr cannot be specified when --configure or -c is not specified"
    );
    let opts = attach(&["-c", "--macaddress=52:54:00:12:34:56", "1", "tap0"]);
    assert_eq!(opts.net.guest_mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
}

#[test]
fn netns_path_must_exist_while_parsing() {
    let err = error(&["--netns-type=path", "/nonexistent/netns", "tap0"]);
    assert_eq!(
        err.message,
        "existing path expected when --netns-type=path: No such file or directory"
    );
    let opts = attach(&["--netns-type=path", "/proc/self/ns/net", "tap0"]);
    assert_eq!(opts.target, Target::Path("/proc/self/ns/net".into()));
}

#[test]
fn run_stops_at_the_command() {
    let Ok(Command::Run(opts)) = parse(&argv(&["run", "--mtu", "9000", "sh", "-c", "exit 3"]))
    else {
        panic!("expected run");
    };
    assert_eq!(opts.net.mtu, 9000);
    assert_eq!(opts.command, ["sh", "-c", "exit 3"]);
    let Ok(Command::Run(opts)) = parse(&argv(&["run", "--", "--mtu"])) else {
        panic!("expected run");
    };
    assert_eq!(opts.command, ["--mtu"]);
}

#[test]
fn run_rejects_attach_only_options() {
    assert_eq!(
        error(&["run", "-r", "3", "true"]).message,
        "tapsplice: invalid option -- 'r'"
    );
    assert_eq!(error(&["run"]).message, "tapsplice run: no command given");
}
