//! tapsplice: a userspace network stack for rootless containers, a drop-in for slirp4netns.
//!
//! A TAP device inside the container's network namespace feeds a smoltcp stack that runs
//! in the host namespace; each guest flow is spliced to an ordinary host socket.

pub mod cli; // slirp4netns-compatible command line
pub mod config; // addresses derived from --cidr, MTU, parse errors with slirp4netns texts
pub mod event_loop; // the mio loop: TAP, host sockets, signals, exit fd, child
pub mod flow; // NAT: guest TCP flows spliced to host sockets
pub mod forward; // port forwards, the slirp4netns API socket, the splice fast path
pub mod inspect; // `tapsplice stats|flows|forwards|pcap|probe`: clients of the API socket
pub mod launch; // attach to a namespace or create one, then run the loop
pub mod stack; // sans-IO guest-facing TCP/IP on smoltcp
pub mod stats; // counters and drop reasons
pub mod sys; // every raw syscall, and the only code exempt from the crate-wide safety lint
