//! Frames through the sans-IO stack, no kernel: the cost of one TCP segment with 1, 1,000 and
//! 10,000 established flows, so that a cost growing with the number of flows shows at once.
//!
//! `ingress`: the guest sends a 1460-byte segment (MTU 1500) to one of N flows, round-robin;
//! the frame is classified, looked up in a `HashMap<FlowKey, GuestSocket>` as the flow table
//! does, delivered, drained from the socket (what the host write would take), and the flow
//! is polled, which emits the ACK. One iteration = one data frame in + one ACK out.
//! `egress`: the host side has 1460 bytes for one of N flows; the flow is polled, the data
//! frame is taken from the device, and the guest's ACK for it goes back in. One iteration =
//! one data frame out + one ACK in.
//!
//! Time is virtual (one microsecond per frame), frames are built here by hand (Ethernet, IPv4,
//! TCP with real checksums, updated incrementally per segment), so the figures are the stack's
//! own CPU cost. criterion reports time per iteration (ns per data frame) and bytes/s of TCP
//! payload. Run: `cargo bench --bench stack` (about 40 s); pass a filter to run one case, e.g.
//! `cargo bench --bench stack -- ingress/10000`.
//!
//! Memory: every socket has 512 KiB receive and send rings (`GUEST_TCP_BUFFER`), allocated
//! zeroed and made resident only as data passes through them. The receive ring keeps moving
//! forward even when it is drained after every segment (smoltcp resets the position of an
//! empty ring on `enqueue`, which the send side uses, but not on the TCP receive path), so
//! with 1,000 and 10,000 flows most ingress segments land on a page no one has touched yet:
//! those figures include first-touch page faults (see the sys time), which a real instance
//! pays once per flow for its first 512 KiB. With the short measurement below the
//! 10,000-flow case makes ~1-2 GiB resident.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smoltcp::time::Instant;
use tapsplice::config::NetConfig;
use tapsplice::stack::{FlowKey, GuestSocket, Ingress, Stack};

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const MSS: usize = 1460;
const HEADERS: usize = 14 + 20 + 20;
const FLOW_COUNTS: [usize; 3] = [1, 1_000, 10_000];

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// Sum of 16-bit big-endian words, not yet folded.
fn sum16(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The TCP header fields of a guest segment that vary.
#[derive(Clone, Copy)]
struct Seg {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
}

/// One guest-side frame: Ethernet + IPv4 + TCP (+ options) + payload, checksums filled in.
fn guest_frame(gw_mac: [u8; 6], seg: Seg, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let Seg {
        sport,
        dport,
        seq,
        ack,
        flags,
    } = seg;
    let tcp_len = 20 + options.len() + payload.len();
    let ip_len = 20 + tcp_len;
    let mut f = vec![0u8; 14 + ip_len];
    f[0..6].copy_from_slice(&gw_mac);
    f[6..12].copy_from_slice(&GUEST_MAC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&GUEST.octets());
    ip[16..20].copy_from_slice(&REMOTE.octets());
    let ip_sum = !fold(sum16(ip));
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp = &mut f[34..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = (((20 + options.len()) / 4) as u8) << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    tcp[20..20 + options.len()].copy_from_slice(options);
    tcp[20 + options.len()..].copy_from_slice(payload);
    let sum = pseudo_sum(tcp_len) + sum16(tcp);
    let tcp_sum = !fold(sum);
    tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
    f
}

fn pseudo_sum(tcp_len: usize) -> u32 {
    sum16(&GUEST.octets()) + sum16(&REMOTE.octets()) + 6 + tcp_len as u32
}

/// TCP seq and ack of a frame the stack sent, and its payload length.
fn parse_out(frame: &[u8]) -> (u32, u32, u8, usize) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let tcp = &frame[14 + ihl..];
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let doff = usize::from(tcp[12] >> 4) * 4;
    (seq, ack, tcp[13], total - ihl - doff)
}

/// An established flow as the guest sees it, with a header template for its segments.
struct GuestEnd {
    key: FlowKey,
    /// Next sequence number the guest sends.
    seq: u32,
    /// Next sequence number the guest expects from the stack (what it ACKs).
    ack: u32,
    /// Ethernet+IPv4+TCP header of a full data segment with seq = 0 and checksum 0, and the
    /// unfolded checksum sum of that header, the pseudo-header and the payload.
    data_header: [u8; HEADERS],
    data_sum: u32,
    /// The same for a bare ACK (no payload); ack = 0 in the template.
    ack_header: [u8; HEADERS],
    ack_sum: u32,
}

struct Bench {
    stack: Stack,
    flows: HashMap<FlowKey, GuestSocket>,
    ends: Vec<GuestEnd>,
    payload: Vec<u8>,
    next: usize,
    clock: i64,
    sink: Vec<u8>,
    bytes_in: u64,
    bytes_out: u64,
    frames_sent: u64,
    bytes_queued: u64,
}

impl Bench {
    fn now(&mut self) -> Instant {
        self.clock += 1;
        Instant::from_micros(self.clock)
    }

    fn feed(&mut self, frame: &[u8]) -> Ingress {
        let now = self.now();
        self.stack.rx_buffer()[..frame.len()].copy_from_slice(frame);
        self.stack.classify(now, frame.len())
    }

    fn take_tx(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = self.stack.next_tx() {
            out.push(f.to_vec());
            self.stack.tx_done();
        }
        out
    }

    /// A stack with `n` established flows, handshakes done as the event loop does them.
    fn new(n: usize) -> Bench {
        let cfg = NetConfig::default();
        let gw_mac = cfg.gateway_mac();
        let gateway = cfg.gateway();
        let mut b = Bench {
            stack: Stack::new(cfg, Instant::from_micros(0)),
            flows: HashMap::with_capacity(n),
            ends: Vec::with_capacity(n),
            payload: (0..MSS).map(|i| (i * 7) as u8).collect(),
            next: 0,
            clock: 0,
            sink: vec![0; 64 * 1024],
            bytes_in: 0,
            bytes_out: 0,
            frames_sent: 0,
            bytes_queued: 0,
        };
        // The guest's ARP for its gateway, as a real guest sends first: the stack learns
        // the guest's MAC from it.
        let mut arp = vec![0u8; 42];
        arp[0..6].copy_from_slice(&[0xff; 6]);
        arp[6..12].copy_from_slice(&GUEST_MAC);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp[22..28].copy_from_slice(&GUEST_MAC);
        arp[28..32].copy_from_slice(&GUEST.octets());
        arp[38..42].copy_from_slice(&gateway.octets());
        assert_eq!(b.feed(&arp), Ingress::Handled, "ARP for the gateway");
        b.take_tx();

        for i in 0..n {
            let sport = 10_000 + (i % 50_000) as u16;
            let dport = 80 + (i / 50_000) as u16;
            let isn = 1_000u32.wrapping_add(i as u32 * 7919);
            let seg = |seq, ack, flags| Seg {
                sport,
                dport,
                seq,
                ack,
                flags,
            };
            // MSS 1460, window scale 7.
            let options = [2, 4, (MSS >> 8) as u8, MSS as u8, 1, 3, 3, 7];
            let syn = guest_frame(gw_mac, seg(isn, 0, SYN), &options, &[]);
            let Ingress::Tcp { key, opens: true } = b.feed(&syn) else {
                panic!("SYN {i} not classified as an opening TCP segment");
            };
            let mut guest = b.stack.open_guest_socket(key);
            let now = b.now();
            b.stack.deliver(now, Some(&mut guest));
            guest.accept();
            let now = b.now();
            b.stack.poll_flow(now, &mut guest);
            let out = b.take_tx();
            let (stack_isn, _, flags, _) = parse_out(out.last().expect("a SYN-ACK"));
            assert_eq!(flags & (SYN | ACK), SYN | ACK, "SYN-ACK of flow {i}");
            let (seq, ack) = (isn.wrapping_add(1), stack_isn.wrapping_add(1));
            let hs_ack = guest_frame(gw_mac, seg(seq, ack, ACK), &[], &[]);
            assert!(matches!(b.feed(&hs_ack), Ingress::Tcp { opens: false, .. }));
            let now = b.now();
            b.stack.deliver(now, Some(&mut guest));
            b.take_tx();
            assert_eq!(guest.state(), smoltcp::socket::tcp::State::Established);
            b.flows.insert(key, guest);

            let payload = b.payload.clone();
            let data = guest_frame(gw_mac, seg(0, ack, ACK | PSH), &[], &payload);
            let mut data_header = [0u8; HEADERS];
            data_header.copy_from_slice(&data[..HEADERS]);
            data_header[HEADERS - 4..HEADERS - 2].copy_from_slice(&[0, 0]);
            let data_sum = pseudo_sum(20 + MSS) + sum16(&data_header[34..]) + sum16(&payload);
            let bare = guest_frame(gw_mac, seg(seq, 0, ACK), &[], &[]);
            let mut ack_header = [0u8; HEADERS];
            ack_header.copy_from_slice(&bare);
            ack_header[HEADERS - 4..HEADERS - 2].copy_from_slice(&[0, 0]);
            let ack_sum = pseudo_sum(20) + sum16(&ack_header[34..]);
            b.ends.push(GuestEnd {
                key,
                seq,
                ack,
                data_header,
                data_sum,
                ack_header,
                ack_sum,
            });
        }
        b
    }

    /// One data segment from the guest to the next flow, through to the stack's ACK.
    fn ingress_step(&mut self) {
        let i = self.next;
        self.next = (i + 1) % self.ends.len();
        let now = self.now();
        let end = &mut self.ends[i];
        let seq = end.seq;
        end.seq = seq.wrapping_add(MSS as u32);
        let sum = !fold(end.data_sum + (seq >> 16) + (seq & 0xffff));
        let rx = self.stack.rx_buffer();
        rx[..HEADERS].copy_from_slice(&end.data_header);
        rx[38..42].copy_from_slice(&seq.to_be_bytes());
        rx[50..52].copy_from_slice(&sum.to_be_bytes());
        rx[HEADERS..HEADERS + MSS].copy_from_slice(&self.payload);
        let Ingress::Tcp { key, .. } = self.stack.classify(now, HEADERS + MSS) else {
            panic!("data segment not classified as TCP");
        };
        let guest = self.flows.get_mut(&key).expect("flow in the table");
        self.stack.deliver_batched(now, guest);
        // What the host write would take: copy everything out of the receive ring.
        loop {
            let n = guest.socket().recv_slice(&mut self.sink).unwrap_or(0);
            if n == 0 {
                break;
            }
            self.bytes_in += n as u64;
        }
        self.stack.poll_flow(now, guest);
        while let Some(frame) = self.stack.next_tx() {
            black_box(frame);
            self.stack.tx_done();
        }
        self.frames_sent += 1;
    }

    /// 1460 bytes from the host for the next flow: the stack sends them, the guest ACKs.
    fn egress_step(&mut self) {
        let i = self.next;
        self.next = (i + 1) % self.ends.len();
        let now = self.now();
        let key = self.ends[i].key;
        let guest = self.flows.get_mut(&key).expect("flow in the table");
        let queued = guest.socket().send_slice(&self.payload).unwrap_or(0);
        self.stack.poll_flow(now, guest);
        let end = &mut self.ends[i];
        while let Some(frame) = self.stack.next_tx() {
            let (seq, _, _, len) = parse_out(frame);
            if len > 0 {
                end.ack = seq.wrapping_add(len as u32);
                self.bytes_out += len as u64;
            }
            self.stack.tx_done();
        }
        let ack = end.ack;
        let sum = !fold(end.ack_sum + (ack >> 16) + (ack & 0xffff));
        let rx = self.stack.rx_buffer();
        rx[..HEADERS].copy_from_slice(&end.ack_header);
        rx[42..46].copy_from_slice(&ack.to_be_bytes());
        rx[50..52].copy_from_slice(&sum.to_be_bytes());
        let Ingress::Tcp { key, .. } = self.stack.classify(now, HEADERS) else {
            panic!("ACK not classified as TCP");
        };
        let guest = self.flows.get_mut(&key).expect("flow in the table");
        self.stack.deliver(now, Some(guest));
        while self.stack.next_tx().is_some() {
            self.stack.tx_done();
        }
        self.bytes_queued += queued as u64;
    }

    /// Bytes still waiting in the flows' send rings.
    fn unsent(&mut self) -> u64 {
        let keys: Vec<FlowKey> = self.ends.iter().map(|e| e.key).collect();
        keys.iter()
            .map(|k| {
                self.flows
                    .get_mut(k)
                    .map_or(0, |g| g.socket().send_queue() as u64)
            })
            .sum()
    }
}

fn stack_benches(c: &mut Criterion) {
    for (name, step) in [
        ("ingress", Bench::ingress_step as fn(&mut Bench)),
        ("egress", Bench::egress_step as fn(&mut Bench)),
    ] {
        let mut group = c.benchmark_group(name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .throughput(Throughput::Bytes(MSS as u64));
        for n in FLOW_COUNTS {
            let mut bench = Bench::new(n);
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| step(&mut bench))
            });
            // Every byte the guest sent arrived (ingress), or every byte the host queued went
            // out to the guest (egress): the figures are for a stack that did its job.
            let (moved, expected) = if name == "ingress" {
                (bench.bytes_in, bench.frames_sent * MSS as u64)
            } else {
                let unsent = bench.unsent();
                (bench.bytes_out, bench.bytes_queued - unsent)
            };
            assert!(expected > 0, "{name}/{n}: nothing moved");
            assert_eq!(moved, expected, "{name}/{n}: bytes moved");
        }
        group.finish();
    }
}

criterion_group!(benches, stack_benches);
criterion_main!(benches);
