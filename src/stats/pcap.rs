//! Capture of the TAP's frames to a classic pcap file, for tcpdump and Wireshark.
//!
//! The format is the original libpcap one: a 24-byte global header (magic `0xa1b2c3d4` in
//! our byte order, version 2.4, microsecond timestamps, `LINKTYPE_ETHERNET`), then per frame
//! a 16-byte record header (wall-clock seconds and microseconds, bytes kept, bytes on the
//! wire) and the frame's first `snaplen` bytes. It is small enough to write by hand and every
//! reader knows it; pcapng would add nothing a capture of one Ethernet link needs.
//!
//! The event loop must never wait for a disk. So it only encodes records into a batch buffer
//! (a copy of each frame and a clock read), and once per turn hands the batch to a writer
//! thread through a bounded channel of [`BATCHES_IN_FLIGHT`] batches; the writer returns
//! the emptied buffers for reuse, so a capture allocates a few batches once and nothing per
//! frame. When the writer falls behind and the channel is full, the batch stays and keeps
//! growing; once it is full too, further frames are counted as dropped: a capture may lose
//! frames, the guest's traffic may not
//! slow down. The file is opened non-blocking, so a FIFO without a reader is an error at
//! start instead of a hang.
//!
//! A size limit is enforced when records are encoded, counting the header and every record
//! handed over, so the file never grows past it: the record that would cross it ends the
//! capture. The ended writer finishes its queue on its own and is joined later, never inside
//! the data path. When no capture runs, [`Capturer::frame`] is one branch.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::mem;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use super::report::PcapReport;
use crate::sys::strerror;

/// Bytes kept of each frame unless told otherwise, as tcpdump does; frames at MTU 65520 fit
/// whole.
pub const DEFAULT_SNAPLEN: u32 = 262_144;

/// Written in our own byte order; readers tell the order from how this reads back.
const MAGIC_MICROSECONDS: u32 = 0xa1b2_c3d4;
const VERSION_MAJOR: u16 = 2;
const VERSION_MINOR: u16 = 4;
/// `LINKTYPE_ETHERNET`: every record is an Ethernet frame.
const LINKTYPE_ETHERNET: u32 = 1;
const GLOBAL_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;

/// A batch is handed to the writer once it holds this much, even within one event-loop turn.
const BATCH_BYTES: usize = 256 * 1024;
/// Batches queued for the writer before new ones are dropped: about 1 MiB of frames.
const BATCHES_IN_FLIGHT: usize = 4;

/// What to capture into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapOptions {
    /// Created, or truncated if it exists; a new file gets mode 0600.
    pub path: PathBuf,
    /// Bytes kept of each frame; 0 means [`DEFAULT_SNAPLEN`].
    pub snaplen: u32,
    /// The file never grows past this many bytes; 0 means no limit.
    pub max_bytes: u64,
}

/// Why a capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// Only one capture runs at a time.
    #[error("already capturing to {}", .0.display())]
    AlreadyCapturing(PathBuf),
    /// The size limit leaves no room for the file's own header.
    #[error("size limit of {0} bytes is smaller than the {GLOBAL_HEADER_LEN}-byte pcap header")]
    SizeLimitTooSmall(u64),
    /// Creating or writing the file, or starting its writer thread, failed.
    #[error("{what}: {}", strerror(cause))]
    Io { what: String, cause: io::Error },
}

/// Owns at most one running capture plus the report of the last one.
#[derive(Default)]
pub struct Capturer {
    running: Option<Capture>,
    last: Option<PcapReport>,
    /// The writer of a capture that ended by itself, still writing its queue.
    draining: Option<JoinHandle<()>>,
}

impl Capturer {
    /// Creates (or truncates) the file, writes the pcap header and starts the writer thread.
    pub fn start(&mut self, opts: PcapOptions) -> Result<PcapReport, PcapError> {
        self.end_if_failed();
        if let Some(capture) = &self.running {
            return Err(PcapError::AlreadyCapturing(PathBuf::from(
                &capture.report.path,
            )));
        }
        let snaplen = match opts.snaplen {
            0 => DEFAULT_SNAPLEN,
            n => n,
        };
        if opts.max_bytes != 0 && opts.max_bytes < GLOBAL_HEADER_LEN as u64 {
            return Err(PcapError::SizeLimitTooSmall(opts.max_bytes));
        }
        // The last capture may still be writing, perhaps to this same path.
        self.join_draining();
        let capture = Capture::start(&opts.path, snaplen, opts.max_bytes)?;
        let report = capture.report();
        self.running = Some(capture);
        Ok(report)
    }

    /// Ends the running capture: hands over what is pending, waits until the writer has
    /// written it and closed the file, and returns the final report. `None` if no capture
    /// runs. Either way, a capture that ended by itself is complete on disk when this returns.
    pub fn stop(&mut self) -> Option<PcapReport> {
        let report = self.running.take().map(Capture::stop);
        self.join_draining();
        if report.is_some() {
            self.last.clone_from(&report);
        }
        report
    }

    /// The running capture, or the last one.
    pub fn report(&self) -> Option<PcapReport> {
        match &self.running {
            Some(capture) => Some(capture.report()),
            None => self.last.clone(),
        }
    }

    /// Records one frame that crossed the TAP, either way.
    #[inline]
    pub fn frame(&mut self, frame: &[u8]) {
        if self.running.is_some() {
            self.capture_frame(frame);
        }
    }

    /// Hands the frames recorded since the last call to the writer; once per event-loop turn.
    pub fn flush(&mut self) {
        if let Some(capture) = &mut self.running
            && let Err(ending) = capture.hand_over()
        {
            self.end(ending);
        }
        if self.draining.as_ref().is_some_and(JoinHandle::is_finished) {
            self.join_draining();
        }
    }

    pub fn is_active(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|capture| capture.failure.get().is_none())
    }

    #[inline(never)]
    fn capture_frame(&mut self, frame: &[u8]) {
        if let Some(capture) = &mut self.running
            && let Err(ending) = capture.record(frame, SystemTime::now())
        {
            self.end(ending);
        }
    }

    /// Ends the running capture without waiting for its writer. (`start` joined the writer
    /// before, so there is at most one draining.)
    fn end(&mut self, ending: Ending) {
        if let Some(capture) = self.running.take() {
            let (report, writer) = capture.end(ending);
            self.last = Some(report);
            self.draining = Some(writer);
        }
    }

    fn end_if_failed(&mut self) {
        if let Some(message) = self.running.as_ref().and_then(Capture::failure) {
            self.end(Ending::WriteError(message));
        }
    }

    fn join_draining(&mut self) {
        if let Some(writer) = self.draining.take() {
            // The writer reports its failures through `failure`; a panic there would be a
            // bug, and the capture is over either way.
            let _ = writer.join();
        }
    }
}

impl Drop for Capturer {
    /// A capture still running when tapsplice exits is finished, not cut short.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a capture ended.
enum Ending {
    Stopped,
    SizeLimit,
    WriteError(String),
}

impl Ending {
    fn reason(self) -> String {
        match self {
            Ending::Stopped => "stopped".to_string(),
            Ending::SizeLimit => "size limit reached".to_string(),
            Ending::WriteError(message) => format!("write error: {message}"),
        }
    }
}

/// One running capture: the batch being filled and the writer thread behind it.
struct Capture {
    /// Counts what the writer accepted; `active` and `ended` are set when it ends.
    report: PcapReport,
    /// Encoded records not yet handed to the writer.
    batch: Vec<u8>,
    batch_frames: u64,
    to_writer: SyncSender<Vec<u8>>,
    /// Batches the writer has written, empty, for reuse.
    spare: Receiver<Vec<u8>>,
    /// Set once by the writer when a write fails; it stops writing then.
    failure: Arc<OnceLock<String>>,
    writer: JoinHandle<()>,
}

impl Capture {
    fn start(path: &Path, snaplen: u32, max_bytes: u64) -> Result<Capture, PcapError> {
        let io_error = |cause| PcapError::Io {
            what: path.display().to_string(),
            cause,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io_error)?;
        // Non-blocking only for the open (a FIFO without a reader fails with ENXIO); the
        // writer thread may block on it.
        fcntl(&file, FcntlArg::F_SETFL(OFlag::empty())).map_err(|e| io_error(e.into()))?;
        file.write_all(&global_header(snaplen)).map_err(io_error)?;

        let (to_writer, batches) = mpsc::sync_channel(BATCHES_IN_FLIGHT);
        let (give_back, spare) = mpsc::channel();
        let failure = Arc::new(OnceLock::new());
        let writer_failure = Arc::clone(&failure);
        let writer = thread::Builder::new()
            .name("pcap-writer".to_string())
            .spawn(move || write_batches(file, batches, give_back, &writer_failure))
            .map_err(|cause| PcapError::Io {
                what: "start the pcap writer thread".to_string(),
                cause,
            })?;
        Ok(Capture {
            report: PcapReport {
                path: path.display().to_string(),
                active: true,
                snaplen,
                max_bytes,
                frames: 0,
                bytes: GLOBAL_HEADER_LEN as u64,
                dropped: 0,
                ended: None,
            },
            batch: Vec::with_capacity(BATCH_BYTES),
            batch_frames: 0,
            to_writer,
            spare,
            failure,
            writer,
        })
    }

    /// Appends one record to the batch, handing the batch over first if it is full. Fails
    /// when the record would take the file past its size limit.
    fn record(&mut self, frame: &[u8], now: SystemTime) -> Result<(), Ending> {
        let kept = frame.len().min(self.report.snaplen as usize);
        let record_len = RECORD_HEADER_LEN + kept;
        let max_bytes = self.report.max_bytes;
        if max_bytes != 0 && self.report.bytes + (self.batch.len() + record_len) as u64 > max_bytes
        {
            self.report.dropped += 1;
            return Err(Ending::SizeLimit);
        }
        if !self.batch.is_empty() && self.batch.len() + record_len > BATCH_BYTES {
            self.hand_over()?;
            if !self.batch.is_empty() {
                // The writer's queue is full and so is this batch: the frame is lost.
                self.report.dropped += 1;
                return Ok(());
            }
        }
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        // The format's seconds are 32 bits wide; they wrap in 2106, as every reader expects.
        let header = [
            since_epoch.as_secs() as u32,
            since_epoch.subsec_micros(),
            kept as u32,
            u32::try_from(frame.len()).unwrap_or(u32::MAX),
        ];
        for field in header {
            self.batch.extend_from_slice(&field.to_ne_bytes());
        }
        self.batch.extend_from_slice(&frame[..kept]);
        self.batch_frames += 1;
        Ok(())
    }

    /// Passes the batch to the writer if there is room in its queue; else the batch stays
    /// and grows (frames are dropped only once it is full, in `record`). Fails when the
    /// writer has stopped after a write error.
    fn hand_over(&mut self) -> Result<(), Ending> {
        if let Some(message) = self.failure() {
            self.report.dropped += mem::take(&mut self.batch_frames);
            return Err(Ending::WriteError(message));
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let frames = mem::take(&mut self.batch_frames);
        let len = self.batch.len() as u64;
        match self.to_writer.try_send(mem::take(&mut self.batch)) {
            Ok(()) => {
                self.report.frames += frames;
                self.report.bytes += len;
                self.batch = self
                    .spare
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(BATCH_BYTES));
                Ok(())
            }
            Err(TrySendError::Full(batch)) => {
                self.batch = batch;
                self.batch_frames = frames;
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => {
                self.report.dropped += frames;
                let message = self
                    .failure()
                    .unwrap_or_else(|| "the writer thread ended".to_string());
                Err(Ending::WriteError(message))
            }
        }
    }

    /// Ends the capture without waiting: what is pending goes to the writer if there is room,
    /// and closing the channel lets the writer finish its queue and close the file.
    fn end(mut self, ending: Ending) -> (PcapReport, JoinHandle<()>) {
        let ending = match (ending, self.hand_over()) {
            (Ending::WriteError(message), _) => Ending::WriteError(message),
            (_, Err(failed)) => failed,
            (ending, Ok(())) => ending,
        };
        self.report.active = false;
        self.report.ended = Some(ending.reason());
        (self.report, self.writer)
    }

    /// Ends the capture and waits: everything recorded is written (unless a write fails) and
    /// the file is closed when this returns.
    fn stop(mut self) -> PcapReport {
        if !self.batch.is_empty() {
            let frames = mem::take(&mut self.batch_frames);
            let len = self.batch.len() as u64;
            if self.to_writer.send(mem::take(&mut self.batch)).is_ok() {
                self.report.frames += frames;
                self.report.bytes += len;
            } else {
                self.report.dropped += frames;
            }
        }
        drop(self.to_writer);
        // See `Capturer::join_draining`.
        let _ = self.writer.join();
        let ending = match self.failure.get() {
            Some(message) => Ending::WriteError(message.clone()),
            None => Ending::Stopped,
        };
        self.report.active = false;
        self.report.ended = Some(ending.reason());
        self.report
    }

    fn report(&self) -> PcapReport {
        let mut report = self.report.clone();
        if let Some(message) = self.failure() {
            report.active = false;
            report.ended = Some(Ending::WriteError(message).reason());
        }
        report
    }

    fn failure(&self) -> Option<String> {
        self.failure.get().cloned()
    }
}

fn global_header(snaplen: u32) -> [u8; GLOBAL_HEADER_LEN] {
    let mut header = [0; GLOBAL_HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC_MICROSECONDS.to_ne_bytes());
    header[4..6].copy_from_slice(&VERSION_MAJOR.to_ne_bytes());
    header[6..8].copy_from_slice(&VERSION_MINOR.to_ne_bytes());
    // Bytes 8..16: time zone offset and timestamp accuracy, both 0 (UTC, unknown).
    header[16..20].copy_from_slice(&snaplen.to_ne_bytes());
    header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    header
}

/// The writer thread: writes batches until the capture closes the channel or a write fails.
fn write_batches(
    mut file: File,
    batches: Receiver<Vec<u8>>,
    give_back: mpsc::Sender<Vec<u8>>,
    failure: &OnceLock<String>,
) {
    for mut batch in batches {
        if let Err(e) = file.write_all(&batch) {
            let _ = failure.set(strerror(&e));
            return;
        }
        batch.clear();
        // The capture may have ended already; then the buffer is simply freed.
        let _ = give_back.send(batch);
    }
}

#[cfg(test)]
mod tests;
