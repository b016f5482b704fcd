//! The capture read back by a small pcap reader written here from the format's description,
//! so the tests check the bytes a tcpdump would read, not the writer against itself.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::stat::Mode;
use nix::unistd::mkfifo;

use super::*;

/// A path in the temporary directory, removed when the test ends.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> TempPath {
        let path =
            std::env::temp_dir().join(format!("tapsplice-pcap-{}-{name}.pcap", std::process::id()));
        let _ = fs::remove_file(&path);
        TempPath(path)
    }

    fn options(&self, snaplen: u32, max_bytes: u64) -> PcapOptions {
        PcapOptions {
            path: self.0.clone(),
            snaplen,
            max_bytes,
        }
    }

    fn shown(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A frame of `len` bytes whose content tells frames apart.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

struct PcapFile {
    magic: u32,
    version: (u16, u16),
    thiszone: i32,
    sigfigs: u32,
    snaplen: u32,
    linktype: u32,
    records: Vec<Record>,
}

struct Record {
    ts_sec: u32,
    ts_usec: u32,
    orig_len: u32,
    data: Vec<u8>,
}

/// Reads a whole pcap file written in this machine's byte order; panics on anything short
/// or left over.
fn parse_pcap(bytes: &[u8]) -> PcapFile {
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
    let u16_at = |at: usize| u16::from_ne_bytes(bytes[at..at + 2].try_into().unwrap());
    assert!(bytes.len() >= 24, "no global header: {} bytes", bytes.len());
    let mut file = PcapFile {
        magic: u32_at(0),
        version: (u16_at(4), u16_at(6)),
        thiszone: u32_at(8) as i32,
        sigfigs: u32_at(12),
        snaplen: u32_at(16),
        linktype: u32_at(20),
        records: Vec::new(),
    };
    let mut at = 24;
    while at < bytes.len() {
        assert!(at + 16 <= bytes.len(), "record header cut short at {at}");
        let incl_len = u32_at(at + 8) as usize;
        let data_at = at + 16;
        assert!(
            data_at + incl_len <= bytes.len(),
            "record data cut short at {at}"
        );
        file.records.push(Record {
            ts_sec: u32_at(at),
            ts_usec: u32_at(at + 4),
            orig_len: u32_at(at + 12),
            data: bytes[data_at..data_at + incl_len].to_vec(),
        });
        at = data_at + incl_len;
    }
    file
}

fn read_pcap(path: &TempPath) -> PcapFile {
    parse_pcap(&fs::read(&path.0).unwrap())
}

fn micros_since_epoch(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros()
}

#[test]
fn capture_file_parses_as_classic_pcap_with_every_frame_whole() {
    let path = TempPath::new("parses");
    let mut capturer = Capturer::default();
    let started = capturer.start(path.options(0, 0)).unwrap();
    assert_eq!(
        started,
        PcapReport {
            path: path.shown(),
            active: true,
            snaplen: DEFAULT_SNAPLEN,
            max_bytes: 0,
            frames: 0,
            bytes: 24,
            dropped: 0,
            ended: None,
        }
    );
    let frames = [frame(60, 1), frame(1514, 2), frame(65534, 3)];
    let before = SystemTime::now();
    for f in &frames {
        capturer.frame(f);
    }
    capturer.flush();
    let after = SystemTime::now();

    let report = capturer.stop().unwrap();
    let data_len: u64 = frames.iter().map(|f| 16 + f.len() as u64).sum();
    assert_eq!(
        report,
        PcapReport {
            path: path.shown(),
            active: false,
            snaplen: DEFAULT_SNAPLEN,
            max_bytes: 0,
            frames: 3,
            bytes: 24 + data_len,
            dropped: 0,
            ended: Some("stopped".to_string()),
        }
    );
    assert_eq!(capturer.report(), Some(report.clone()));
    assert!(!capturer.is_active());
    assert_eq!(fs::metadata(&path.0).unwrap().len(), report.bytes);

    let pcap = read_pcap(&path);
    assert_eq!(pcap.magic, 0xa1b2_c3d4);
    assert_eq!(pcap.version, (2, 4));
    assert_eq!((pcap.thiszone, pcap.sigfigs), (0, 0));
    assert_eq!(pcap.snaplen, 262_144);
    assert_eq!(pcap.linktype, 1, "LINKTYPE_ETHERNET");
    assert_eq!(pcap.records.len(), frames.len());
    for (record, sent) in pcap.records.iter().zip(&frames) {
        assert_eq!(record.orig_len as usize, sent.len());
        assert_eq!(&record.data, sent);
        assert!(record.ts_usec < 1_000_000);
        let ts = u128::from(record.ts_sec) * 1_000_000 + u128::from(record.ts_usec);
        assert!((micros_since_epoch(before)..=micros_since_epoch(after)).contains(&ts));
    }
}

#[test]
fn snaplen_cuts_records_short_and_keeps_the_wire_length() {
    let path = TempPath::new("snaplen");
    let mut capturer = Capturer::default();
    capturer.start(path.options(64, 0)).unwrap();
    let long = frame(200, 7);
    let short = frame(30, 8);
    capturer.frame(&long);
    capturer.frame(&short);
    let report = capturer.stop().unwrap();
    assert_eq!(report.snaplen, 64);
    assert_eq!(report.frames, 2);
    assert_eq!(report.bytes, 24 + (16 + 64) + (16 + 30));

    let pcap = read_pcap(&path);
    assert_eq!(pcap.snaplen, 64);
    assert_eq!(pcap.records[0].orig_len, 200);
    assert_eq!(pcap.records[0].data, long[..64]);
    assert_eq!(pcap.records[1].orig_len, 30);
    assert_eq!(pcap.records[1].data, short);
}

#[test]
fn size_limit_ends_the_capture_at_the_first_record_that_would_cross_it() {
    // Records of 100-byte frames take 116 bytes: room for exactly two, then one byte short.
    for (max_bytes, fitting) in [(24 + 2 * 116, 2), (24 + 2 * 116 - 1, 1)] {
        let path = TempPath::new("limit");
        let mut capturer = Capturer::default();
        capturer.start(path.options(0, max_bytes)).unwrap();
        for seed in 0..fitting {
            capturer.frame(&frame(100, seed));
        }
        assert!(capturer.is_active());
        capturer.frame(&frame(100, 9));
        capturer.frame(&frame(100, 10));
        capturer.flush();

        let expected = PcapReport {
            path: path.shown(),
            active: false,
            snaplen: DEFAULT_SNAPLEN,
            max_bytes,
            frames: u64::from(fitting),
            bytes: 24 + 116 * u64::from(fitting),
            dropped: 1,
            ended: Some("size limit reached".to_string()),
        };
        assert!(!capturer.is_active());
        assert_eq!(capturer.report(), Some(expected.clone()));
        assert_eq!(capturer.stop(), None, "nothing runs any more");
        assert_eq!(capturer.report(), Some(expected.clone()));

        assert_eq!(fs::metadata(&path.0).unwrap().len(), expected.bytes);
        let pcap = read_pcap(&path);
        assert_eq!(pcap.records.len(), usize::from(fitting));
        for (seed, record) in pcap.records.iter().enumerate() {
            assert_eq!(record.data, frame(100, seed as u8));
        }
    }
}

#[test]
fn size_limit_below_the_header_is_refused() {
    let path = TempPath::new("tiny-limit");
    let mut capturer = Capturer::default();
    let err = capturer.start(path.options(0, 23)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "size limit of 23 bytes is smaller than the 24-byte pcap header"
    );
    assert!(!capturer.is_active());
    assert!(!path.0.exists());
}

#[test]
fn frames_of_several_batches_in_one_turn_are_all_written() {
    let path = TempPath::new("batches");
    let mut capturer = Capturer::default();
    capturer.start(path.options(0, 0)).unwrap();
    // 12 records of 65550 bytes are three full batches and a partial one: within the queue.
    let frames: Vec<Vec<u8>> = (0..12).map(|seed| frame(65534, seed)).collect();
    for f in &frames {
        capturer.frame(f);
    }
    capturer.flush();
    let report = capturer.stop().unwrap();
    assert_eq!((report.frames, report.dropped), (12, 0));

    let pcap = read_pcap(&path);
    assert_eq!(pcap.records.len(), 12);
    assert!(pcap.records.iter().zip(&frames).all(|(r, f)| &r.data == f));
}

#[test]
fn starting_while_capturing_is_an_error_and_keeps_the_running_capture() {
    let first = TempPath::new("first");
    let second = TempPath::new("second");
    let mut capturer = Capturer::default();
    capturer.start(first.options(0, 0)).unwrap();
    let err = capturer.start(second.options(0, 0)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("already capturing to {}", first.shown())
    );
    assert!(capturer.is_active());
    assert_eq!(capturer.report().unwrap().path, first.shown());
    assert!(!second.0.exists());
}

#[test]
fn stop_without_a_capture_is_none() {
    let mut capturer = Capturer::default();
    assert_eq!(capturer.stop(), None);
    assert_eq!(capturer.report(), None);
    assert!(!capturer.is_active());
}

#[test]
fn a_file_that_cannot_be_created_is_an_error_and_nothing_runs() {
    let path = std::env::temp_dir().join("tapsplice-no-such-dir/capture.pcap");
    let mut capturer = Capturer::default();
    let err = capturer
        .start(PcapOptions {
            path: path.clone(),
            snaplen: 0,
            max_bytes: 0,
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: No such file or directory", path.display())
    );
    assert!(!capturer.is_active());
    assert_eq!(capturer.report(), None);

    let good = TempPath::new("after-error");
    assert!(capturer.start(good.options(0, 0)).unwrap().active);
}

#[test]
fn a_new_capture_file_is_readable_by_its_owner_only() {
    let path = TempPath::new("mode");
    let mut capturer = Capturer::default();
    capturer.start(path.options(0, 0)).unwrap();
    let mode = fs::metadata(&path.0).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn dropping_the_capturer_finishes_the_file() {
    let path = TempPath::new("drop");
    let mut capturer = Capturer::default();
    capturer.start(path.options(0, 0)).unwrap();
    capturer.frame(&frame(1000, 1));
    capturer.flush();
    capturer.frame(&frame(2000, 2));
    drop(capturer);

    let pcap = read_pcap(&path);
    assert_eq!(pcap.records.len(), 2);
    assert_eq!(pcap.records[1].data, frame(2000, 2));
}

/// A FIFO whose read end is open, non-blocking, and not read yet.
fn fifo_with_reader(path: &TempPath) -> File {
    mkfifo(&path.0, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path.0)
        .unwrap()
}

#[test]
fn a_writer_that_falls_behind_costs_frames_not_time() {
    let path = TempPath::new("slow-reader");
    let mut reader = fifo_with_reader(&path);
    let mut capturer = Capturer::default();
    capturer.start(path.options(0, 0)).unwrap();
    // Nobody reads yet: the pipe (64 KiB), the writer's queue and the batch being filled
    // fill up, then frames drop.
    let sent = 64;
    for seed in 0..sent {
        capturer.frame(&frame(65534, seed));
        capturer.flush();
    }
    let running = capturer.report().unwrap();
    assert!(running.active);
    assert!(running.dropped > 0, "{running:?}");
    // The rest wait in the batch that could not be handed over.
    assert!(
        running.frames + running.dropped < u64::from(sent),
        "{running:?}"
    );

    let drain = thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut chunk = vec![0; 1 << 16];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) => return bytes,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("reading the FIFO: {e}"),
            }
        }
    });
    let report = capturer.stop().unwrap();
    assert_eq!(report.dropped, running.dropped);
    assert_eq!(report.frames + report.dropped, u64::from(sent));
    let bytes = drain.join().unwrap();
    assert_eq!(bytes.len() as u64, report.bytes);

    let pcap = parse_pcap(&bytes);
    assert_eq!(pcap.records.len() as u64, report.frames);
    // What was kept is whole frames, in order, each one of those sent.
    let seeds: Vec<u8> = pcap
        .records
        .iter()
        .map(|r| {
            (0..sent)
                .find(|&seed| r.data == frame(65534, seed))
                .expect("a frame that was sent")
        })
        .collect();
    assert!(seeds.windows(2).all(|w| w[0] < w[1]), "{seeds:?}");
}

#[test]
fn a_fifo_without_a_reader_is_an_error_not_a_hang() {
    let path = TempPath::new("no-reader");
    mkfifo(&path.0, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let mut capturer = Capturer::default();
    let err = capturer.start(path.options(0, 0)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: No such device or address", path.shown())
    );
    assert!(!capturer.is_active());
}

#[test]
fn a_write_error_ends_the_capture_and_is_reported() {
    let path = TempPath::new("broken-pipe");
    let reader = fifo_with_reader(&path);
    let mut capturer = Capturer::default();
    capturer.start(path.options(0, 0)).unwrap();
    drop(reader);
    capturer.frame(&frame(100, 1));
    capturer.flush();

    let ended = Some("write error: Broken pipe".to_string());
    let deadline = Instant::now() + Duration::from_secs(5);
    while capturer.report().unwrap().ended != ended {
        assert!(Instant::now() < deadline, "{:?}", capturer.report());
        thread::sleep(Duration::from_millis(1));
    }
    assert!(!capturer.is_active());
    capturer.frame(&frame(100, 2));
    capturer.flush();
    let report = capturer.report().unwrap();
    assert_eq!(
        (report.active, report.frames, report.dropped, report.ended),
        (false, 1, 1, ended)
    );
    assert_eq!(capturer.stop(), None);
}
