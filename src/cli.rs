//! The command line, parsed the way slirp4netns 1.2 parses it.
//!
//! Clients (rootlesskit, Podman, Docker's scripts, slirp4netns's own test suite) build
//! argv for slirp4netns and match its messages, so the main mode follows GNU
//! `getopt_long`: options and operands may be mixed, `--opt=value` and `--opt value`,
//! `-m1500` and `-cm 1500`, unambiguous prefixes of long options (`--mt=1500`), and glibc's
//! texts for unknown, ambiguous and incomplete options. clap cannot reproduce those
//! exactly, hence this small parser. `tapsplice run` shares the option table and stops at
//! the first operand, which starts the command to run.
//!
//! `--help` lists only options that work; rootlesskit and Podman switch features on by
//! searching that text. Options land in the table together with the feature.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{self, ConfigError, NetConfig};
use crate::forward::{ForwardPath, PublishSpec};

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Print this text on stdout, exit 0.
    Help(String),
    /// Print the version text on stdout, exit 0.
    Version,
    /// slirp4netns mode: serve an existing namespace.
    Attach(AttachOptions),
    /// `tapsplice run`: make a namespace, serve it, run a command in it.
    Run(RunOptions),
}

/// Which namespace to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A process whose network (and user) namespace to use.
    Pid(i32),
    /// A network namespace file, e.g. one bind-mounted by rootlesskit or `ip netns`.
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOptions {
    pub net: NetConfig,
    pub configure: bool,
    pub exit_fd: Option<i32>,
    pub ready_fd: Option<i32>,
    pub target: Target,
    pub userns_path: Option<PathBuf>,
    pub tap_name: String,
    pub debug: bool,
    /// `-a`: where to serve the slirp4netns API.
    pub api_socket: Option<PathBuf>,
    /// `--forward-path`: how forwarded TCP reaches the guest.
    pub forward_path: ForwardPath,
    /// `--pcap`: capture the TAP's frames from the start.
    pub pcap: Option<PathBuf>,
    /// `--metrics`: serve Prometheus metrics here.
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    pub net: NetConfig,
    pub debug: bool,
    pub command: Vec<String>,
    pub api_socket: Option<PathBuf>,
    pub forward_path: ForwardPath,
    /// `-p` forwards, in order.
    pub publish: Vec<PublishSpec>,
    pub pcap: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
}

/// A command line that cannot be run. `message` goes to stderr (if not empty), the usage
/// text to stdout when `usage` is set; the exit status is 1, as with slirp4netns.
#[derive(Debug, PartialEq, Eq)]
pub struct CliError {
    pub message: String,
    pub usage: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    Configure,
    ExitFd,
    ReadyFd,
    Mtu,
    EnableIpv6,
    Cidr,
    DisableHostLoopback,
    NoHostLoopback,
    NetnsType,
    UsernsPath,
    MacAddress,
    TargetType,
    OutboundAddr,
    OutboundAddr6,
    DisableDns,
    DnsUpstream,
    ResolvConf,
    UdpTimeout,
    ApiSocket,
    ForwardPath,
    Publish,
    Pcap,
    Metrics,
    Debug,
    Help,
    Version,
}

/// One entry of the option table, as getopt_long's `struct option` plus its help line.
struct OptSpec {
    long: &'static str,
    short: Option<char>,
    takes_arg: bool,
    opt: Opt,
    /// Left and right column of `--help`; `None` for hidden (deprecated) options.
    help: Option<(&'static str, &'static str)>,
    /// Whether `tapsplice run` accepts it.
    in_run: bool,
}

const fn spec(
    long: &'static str,
    short: Option<char>,
    takes_arg: bool,
    opt: Opt,
    help: Option<(&'static str, &'static str)>,
    in_run: bool,
) -> OptSpec {
    OptSpec {
        long,
        short,
        takes_arg,
        opt,
        help,
        in_run,
    }
}

/// The options, in slirp4netns's `--help` order (ours after its).
#[rustfmt::skip]
const OPTIONS: &[OptSpec] = &[
    spec("configure", Some('c'), false, Opt::Configure,
        Some(("-c, --configure", "bring up the interface")), false),
    spec("exit-fd", Some('e'), true, Opt::ExitFd,
        Some(("-e, --exit-fd=FD", "specify the FD for terminating tapsplice")), false),
    spec("ready-fd", Some('r'), true, Opt::ReadyFd,
        Some(("-r, --ready-fd=FD", "specify the FD to write to when the network is configured")), false),
    spec("mtu", Some('m'), true, Opt::Mtu,
        Some(("-m, --mtu=MTU", "specify MTU (default=1500, max=65521)")), true),
    spec("enable-ipv6", Some('6'), false, Opt::EnableIpv6,
        Some(("-6, --enable-ipv6", "enable IPv6 (fd00::/64 by router advertisements)")), true),
    spec("api-socket", Some('a'), true, Opt::ApiSocket,
        Some(("-a, --api-socket=PATH", "specify API socket path")), true),
    spec("cidr", None, true, Opt::Cidr,
        Some(("--cidr=CIDR", "specify network address CIDR (default=10.0.2.0/24)")), true),
    spec("disable-host-loopback", None, false, Opt::DisableHostLoopback,
        Some(("--disable-host-loopback", "prohibit connecting to 127.0.0.1:* on the host namespace")), true),
    spec("no-host-loopback", None, false, Opt::NoHostLoopback, None, true),
    spec("netns-type", None, true, Opt::NetnsType,
        Some(("--netns-type=TYPE", "specify network namespace type ([path|pid], default=pid)")), false),
    spec("userns-path", None, true, Opt::UsernsPath,
        Some(("--userns-path=PATH", "specify user namespace path")), false),
    spec("outbound-addr", None, true, Opt::OutboundAddr,
        Some(("--outbound-addr=IPv4", "sets outbound ipv4 address to bound to (or an interface name)")), true),
    spec("outbound-addr6", None, true, Opt::OutboundAddr6,
        Some(("--outbound-addr6=IPv6", "sets outbound ipv6 address to bound to (or an interface name)")), true),
    spec("disable-dns", None, false, Opt::DisableDns,
        Some(("--disable-dns", "disables 10.0.2.3 (or configured internal ip) to host dns redirect")), true),
    spec("macaddress", None, true, Opt::MacAddress,
        Some(("--macaddress=MAC", "specify the MAC address of the TAP (only valid with -c)")), true),
    spec("target-type", None, true, Opt::TargetType,
        Some(("--target-type=TYPE", "specify the target type ([netns], default=netns)")), false),
    spec("dns-upstream", None, true, Opt::DnsUpstream,
        Some(("--dns-upstream=IP[:PORT]", "relay DNS to this server, not resolv.conf's first")), true),
    spec("resolv-conf", None, true, Opt::ResolvConf,
        Some(("--resolv-conf=PATH", "where to read the DNS server (default=/etc/resolv.conf)")), true),
    spec("udp-timeout", None, true, Opt::UdpTimeout,
        Some(("--udp-timeout=SECS", "idle timeout of answered UDP flows (default=120; unanswered: 30)")), true),
    spec("forward-path", None, true, Opt::ForwardPath,
        Some(("--forward-path=MODE", "how forwarded TCP reaches the guest: auto, stack or splice (default=auto)")), true),
    spec("pcap", None, true, Opt::Pcap,
        Some(("--pcap=FILE", "write every frame crossing the TAP to FILE (pcap format)")), true),
    spec("metrics", None, true, Opt::Metrics,
        Some(("--metrics=[ADDR:]PORT", "serve Prometheus metrics over HTTP (default ADDR=127.0.0.1)")), true),
    spec("debug", None, false, Opt::Debug,
        Some(("--debug", "log flows and decisions to stderr (or set RUST_LOG)")), true),
    spec("help", Some('h'), false, Opt::Help,
        Some(("-h, --help", "show this help and exit")), true),
    spec("version", Some('v'), false, Opt::Version,
        Some(("-v, --version", "show version and exit")), true),
];

/// Options of `tapsplice run` only (slirp4netns has no such options).
const RUN_ONLY_OPTIONS: &[OptSpec] = &[spec(
    "publish",
    Some('p'),
    true,
    Opt::Publish,
    Some((
        "-p, --publish=SPEC",
        "forward [ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp] to the command (repeatable, port ranges A-B)",
    )),
    true,
)];

/// Width of the option column in `--help`, as in slirp4netns.
const HELP_COLUMN: usize = 25;

fn help_lines(in_run: bool) -> String {
    let mut out = String::new();
    let run_only = RUN_ONLY_OPTIONS.iter().filter(|_| in_run);
    for spec in OPTIONS
        .iter()
        .filter(|s| !in_run || s.in_run)
        .chain(run_only)
    {
        if let Some((left, right)) = spec.help {
            out.push_str(&format!("{left:<width$}{right}\n", width = HELP_COLUMN));
        }
    }
    out
}

/// The main usage text (`tapsplice --help`).
pub fn usage(prog: &str) -> String {
    format!(
        "Usage: {prog} [OPTION]... PID|PATH [TAPNAME]\n\
         User-mode networking for unprivileged network namespaces.\n\
         \n\
         {options}\
         \n\
         Standalone: {prog} run [OPTION]... [--] COMMAND [ARG]...  (see {prog} run --help)\n",
        options = help_lines(false),
    )
}

/// The usage text of `tapsplice run`.
pub fn run_usage(prog: &str) -> String {
    format!(
        "Usage: {prog} run [OPTION]... [--] COMMAND [ARG]...\n\
         Run COMMAND in a new network namespace (and user namespace, when not root)\n\
         connected through tapsplice; exit with COMMAND's exit status.\n\
         \n\
         {options}",
        options = help_lines(true),
    )
}

/// The `--version` text: our name first, then the lines clients parse from slirp4netns.
pub fn version_text() -> String {
    format!(
        "tapsplice version {}\n\
         slirp4netns-compatible: 1.2.0\n\
         SLIRP_CONFIG_VERSION_MAX: 3\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// One parsed command-line item.
enum Item {
    Opt(Opt, Option<String>),
    Operand(String),
}

/// A getopt_long-compatible scanner over `args` (without argv[0]).
struct Scanner<'a> {
    prog: &'a str,
    args: &'a [String],
    pos: usize,
    /// Pending short options of a cluster like `-cm1500`.
    cluster: Option<(usize, usize)>,
    /// After `--`, or (in `run`) after the first operand: everything is an operand.
    only_operands: bool,
    /// `run` stops option parsing at the first operand (getopt's `+` mode).
    stop_at_operand: bool,
    in_run: bool,
}

impl<'a> Scanner<'a> {
    fn err(&self, message: String) -> CliError {
        CliError {
            message: format!("{}: {message}", self.prog),
            usage: Some(self.usage()),
        }
    }

    fn usage(&self) -> String {
        if self.in_run {
            run_usage(self.prog)
        } else {
            usage(self.prog)
        }
    }

    fn table(&self) -> impl Iterator<Item = &'static OptSpec> + '_ {
        let run_only = RUN_ONLY_OPTIONS.iter().filter(move |_| self.in_run);
        OPTIONS
            .iter()
            .filter(move |s| !self.in_run || s.in_run)
            .chain(run_only)
    }

    fn next_item(&mut self) -> Result<Option<Item>, CliError> {
        if let Some((arg, at)) = self.cluster.take() {
            return self.short(arg, at).map(Some);
        }
        let Some(arg) = self.args.get(self.pos) else {
            return Ok(None);
        };
        self.pos += 1;
        if self.only_operands {
            return Ok(Some(Item::Operand(arg.clone())));
        }
        if arg == "--" {
            self.only_operands = true;
            return self.next_item();
        }
        if let Some(body) = arg.strip_prefix("--") {
            return self.long(arg, body).map(Some);
        }
        if arg.len() > 1 && arg.starts_with('-') {
            return self.short(self.pos - 1, 1).map(Some);
        }
        if self.stop_at_operand {
            self.only_operands = true;
        }
        Ok(Some(Item::Operand(arg.clone())))
    }

    fn long(&mut self, arg: &str, body: &str) -> Result<Item, CliError> {
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (body, None),
        };
        let exact = self.table().find(|s| s.long == name);
        let spec = match exact {
            Some(spec) => spec,
            None => {
                let candidates: Vec<&OptSpec> =
                    self.table().filter(|s| s.long.starts_with(name)).collect();
                match candidates.as_slice() {
                    [] => return Err(self.err(format!("unrecognized option '{arg}'"))),
                    [one] => *one,
                    many => {
                        let names: Vec<String> =
                            many.iter().map(|s| format!("'--{}'", s.long)).collect();
                        return Err(self.err(format!(
                            "option '{arg}' is ambiguous; possibilities: {}",
                            names.join(" ")
                        )));
                    }
                }
            }
        };
        match (spec.takes_arg, inline) {
            (true, Some(value)) => Ok(Item::Opt(spec.opt, Some(value))),
            (true, None) => match self.args.get(self.pos) {
                Some(value) => {
                    self.pos += 1;
                    Ok(Item::Opt(spec.opt, Some(value.clone())))
                }
                None => Err(self.err(format!("option '--{}' requires an argument", spec.long))),
            },
            (false, Some(_)) => Err(self.err(format!(
                "option '--{}' doesn't allow an argument",
                spec.long
            ))),
            (false, None) => Ok(Item::Opt(spec.opt, None)),
        }
    }

    /// The short option at byte `at` of argument `index`.
    fn short(&mut self, index: usize, at: usize) -> Result<Item, CliError> {
        let arg = &self.args[index];
        let letter = arg[at..].chars().next().unwrap_or('-');
        let rest_at = at + letter.len_utf8();
        let Some(spec) = self.table().find(|s| s.short == Some(letter)) else {
            return Err(self.err(format!("invalid option -- '{letter}'")));
        };
        if !spec.takes_arg {
            if rest_at < arg.len() {
                self.cluster = Some((index, rest_at));
            }
            return Ok(Item::Opt(spec.opt, None));
        }
        if rest_at < arg.len() {
            return Ok(Item::Opt(spec.opt, Some(arg[rest_at..].to_string())));
        }
        match self.args.get(self.pos) {
            Some(value) => {
                self.pos += 1;
                Ok(Item::Opt(spec.opt, Some(value.clone())))
            }
            None => Err(self.err(format!("option requires an argument -- '{letter}'"))),
        }
    }
}

/// Options as collected, before the checks that need all of them.
#[derive(Default)]
struct Collected {
    configure: bool,
    exit_fd: Option<i32>,
    ready_fd: Option<i32>,
    mtu: Option<usize>,
    cidr: Option<String>,
    disable_host_loopback: bool,
    netns_is_path: bool,
    userns_path: Option<PathBuf>,
    mac: Option<String>,
    outbound_addr: Option<String>,
    outbound_addr6: Option<String>,
    disable_dns: bool,
    enable_ipv6: bool,
    dns_upstream: Option<String>,
    resolv_conf: Option<PathBuf>,
    udp_timeout: Option<String>,
    debug: bool,
    operands: Vec<String>,
    api_socket: Option<PathBuf>,
    forward_path: ForwardPath,
    publish: Vec<PublishSpec>,
    pcap: Option<PathBuf>,
    metrics: Option<SocketAddr>,
}

/// Parses a full argv (with argv[0]).
pub fn parse(argv: &[String]) -> Result<Command, CliError> {
    let prog = argv.first().map(String::as_str).unwrap_or("tapsplice");
    let rest = argv.get(1..).unwrap_or_default();
    match rest.first().map(String::as_str) {
        Some("run") => parse_run(prog, &rest[1..]),
        _ => parse_attach(prog, rest),
    }
}

fn collect(scanner: &mut Scanner<'_>) -> Result<Result<Collected, Command>, CliError> {
    let mut c = Collected::default();
    while let Some(item) = scanner.next_item()? {
        let (opt, value) = match item {
            Item::Operand(operand) => {
                c.operands.push(operand);
                continue;
            }
            Item::Opt(opt, value) => (opt, value.unwrap_or_default()),
        };
        let fail = |message: &str| CliError {
            message: message.to_string(),
            usage: Some(scanner.usage()),
        };
        match opt {
            Opt::Help => return Ok(Err(Command::Help(scanner.usage()))),
            Opt::Version => return Ok(Err(Command::Version)),
            Opt::Configure => c.configure = true,
            Opt::ExitFd => {
                c.exit_fd = Some(
                    parse_fd(&value)
                        .ok_or_else(|| fail("exit-fd must be a non-negative integer"))?,
                )
            }
            Opt::ReadyFd => {
                c.ready_fd = Some(
                    parse_fd(&value)
                        .ok_or_else(|| fail("ready-fd must be a non-negative integer"))?,
                )
            }
            Opt::Mtu => c.mtu = Some(config::parse_mtu(&value).map_err(|e| fail(&e.to_string()))?),
            Opt::Cidr => c.cidr = Some(value),
            Opt::EnableIpv6 => c.enable_ipv6 = true,
            Opt::DisableHostLoopback => c.disable_host_loopback = true,
            Opt::NoHostLoopback => {
                println!(
                    "WARNING: --no-host-loopback is deprecated and will be removed in future releases, please use --disable-host-loopback instead."
                );
                c.disable_host_loopback = true;
            }
            Opt::NetnsType => match value.as_str() {
                "pid" => c.netns_is_path = false,
                "path" => c.netns_is_path = true,
                _ => return Err(fail("--netns-type must be either \"pid\" or \"path\"")),
            },
            Opt::UsernsPath => {
                if !Path::new(&value).exists() {
                    return Err(fail(&format!("userns path doesn't exist: {value}")));
                }
                c.userns_path = Some(PathBuf::from(value));
            }
            Opt::MacAddress => c.mac = Some(value),
            Opt::OutboundAddr => c.outbound_addr = Some(value),
            Opt::OutboundAddr6 => c.outbound_addr6 = Some(value),
            Opt::DisableDns => c.disable_dns = true,
            Opt::DnsUpstream => c.dns_upstream = Some(value),
            Opt::ResolvConf => c.resolv_conf = Some(PathBuf::from(value)),
            Opt::UdpTimeout => c.udp_timeout = Some(value),
            Opt::TargetType => match value.as_str() {
                "netns" => {}
                "bess" => {
                    return Err(fail(
                        "--target-type=bess is not supported by tapsplice; only netns is",
                    ));
                }
                _ => return Err(fail("--target-type must be either \"netns\" or \"bess\"")),
            },
            Opt::Debug => c.debug = true,
            // The length is checked when the socket is made, as slirp4netns does.
            Opt::ApiSocket => c.api_socket = Some(PathBuf::from(value)),
            Opt::ForwardPath => {
                c.forward_path = ForwardPath::parse(&value).ok_or_else(|| {
                    fail("--forward-path must be one of \"auto\", \"stack\" or \"splice\"")
                })?
            }
            Opt::Publish => c
                .publish
                .push(crate::forward::parse_publish(&value).map_err(|e| fail(&e))?),
            Opt::Pcap => c.pcap = Some(PathBuf::from(value)),
            Opt::Metrics => {
                c.metrics = Some(
                    parse_metrics_addr(&value)
                        .ok_or_else(|| fail("--metrics must be [ADDR:]PORT"))?,
                )
            }
        }
    }
    Ok(Ok(c))
}

/// `PORT` (on 127.0.0.1), `ADDR:PORT` or `[ADDR6]:PORT`; port 0 takes a free one.
fn parse_metrics_addr(text: &str) -> Option<SocketAddr> {
    match text.parse::<u16>() {
        Ok(port) => Some(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))),
        Err(_) => text.parse().ok(),
    }
}

fn parse_fd(text: &str) -> Option<i32> {
    text.parse::<i32>().ok().filter(|fd| *fd >= 0)
}

/// Builds the network configuration from the collected options (slirp4netns checks these
/// after option parsing, and prints no usage for them).
fn net_config(c: &Collected) -> Result<NetConfig, CliError> {
    let plain = |e: ConfigError| CliError {
        message: e.to_string(),
        usage: None,
    };
    let mut net = NetConfig {
        disable_host_loopback: c.disable_host_loopback,
        disable_dns: c.disable_dns,
        enable_ipv6: c.enable_ipv6,
        ..NetConfig::default()
    };
    if let Some(path) = &c.resolv_conf {
        net.resolv_conf = path.clone();
    }
    if let Some(upstream) = &c.dns_upstream {
        net.dns_upstream = Some(config::parse_dns_upstream(upstream).map_err(plain)?);
    }
    if let Some(secs) = &c.udp_timeout {
        net.udp_timeout = config::parse_udp_timeout(secs).map_err(plain)?;
    }
    if let Some(addr) = &c.outbound_addr {
        net.outbound_addr = Some(config::parse_outbound_addr(addr).map_err(plain)?);
    }
    if let Some(addr) = &c.outbound_addr6 {
        net.outbound_addr6 = Some(config::parse_outbound_addr6(addr).map_err(plain)?);
    }
    if let Some(mtu) = c.mtu {
        net.mtu = mtu;
    }
    if let Some(cidr) = &c.cidr {
        (net.network, net.prefix_len) = config::parse_cidr(cidr).map_err(plain)?;
    }
    if let Some(mac) = &c.mac {
        net.guest_mac = Some(config::parse_mac(mac).map_err(plain)?);
    }
    Ok(net)
}

fn parse_attach(prog: &str, args: &[String]) -> Result<Command, CliError> {
    let mut scanner = Scanner {
        prog,
        args,
        pos: 0,
        cluster: None,
        only_operands: false,
        stop_at_operand: false,
        in_run: false,
    };
    let c = match collect(&mut scanner)? {
        Ok(c) => c,
        Err(done) => return Ok(done),
    };
    let fail = |message: &str| CliError {
        message: message.to_string(),
        usage: Some(usage(prog)),
    };
    if c.mac.is_some() && !c.configure {
        return Err(fail(
            "--macaddr cannot be specified when --configure or -c is not specified",
        ));
    }
    let Some(first) = c.operands.first() else {
        return Err(CliError {
            message: String::new(),
            usage: Some(usage(prog)),
        });
    };
    if c.operands.len() > 2 {
        println!("WARNING: too many arguments");
    }
    let target = if c.netns_is_path {
        if let Err(e) = std::fs::metadata(first) {
            return Err(fail(&format!(
                "existing path expected when --netns-type=path: {}",
                crate::sys::strerror(&e)
            )));
        }
        Target::Path(PathBuf::from(first))
    } else {
        match first.parse::<i32>() {
            Ok(pid) if pid > 0 => Target::Pid(pid),
            _ => return Err(fail("PID must be a positive integer")),
        }
    };
    let net = net_config(&c)?;
    Ok(Command::Attach(AttachOptions {
        net,
        configure: c.configure,
        exit_fd: c.exit_fd,
        ready_fd: c.ready_fd,
        target,
        userns_path: c.userns_path,
        tap_name: c.operands.get(1).cloned().unwrap_or_else(|| "tap0".into()),
        debug: c.debug,
        api_socket: c.api_socket,
        forward_path: c.forward_path,
        pcap: c.pcap,
        metrics: c.metrics,
    }))
}

fn parse_run(prog: &str, args: &[String]) -> Result<Command, CliError> {
    let mut scanner = Scanner {
        prog,
        args,
        pos: 0,
        cluster: None,
        only_operands: false,
        stop_at_operand: true,
        in_run: true,
    };
    let mut c = match collect(&mut scanner)? {
        Ok(c) => c,
        Err(done) => return Ok(done),
    };
    if c.operands.is_empty() {
        return Err(CliError {
            message: format!("{prog} run: no command given"),
            usage: Some(run_usage(prog)),
        });
    }
    // Inside `run` we always configure the interface, so a MAC is meaningful.
    c.configure = true;
    let net = net_config(&c)?;
    Ok(Command::Run(RunOptions {
        net,
        debug: c.debug,
        command: c.operands,
        api_socket: c.api_socket,
        forward_path: c.forward_path,
        publish: c.publish,
        pcap: c.pcap,
        metrics: c.metrics,
    }))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod forward_tests;
