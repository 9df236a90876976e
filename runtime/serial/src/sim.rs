//! A serial cable simulated between two PTYs: bytes cross at the rate of a real line (10 bits
//! per byte at the baud rate), and a receiver that does not read in time loses bytes, as a
//! UART without flow control does. Optional faults flip or drop bytes.
//!
//! Each end's baud rate is whatever the program that opened it set (as with two UARTs): when
//! the two ends disagree, or the sender's rate is above what the cable carries, the receiver
//! gets garbage, as it would from a real line.
//!
//! A PTY pair on its own moves bytes as fast as memory: useless for measuring how long a
//! transfer takes on a real line. `ember line` puts emberd on one end and the host on the other.

use crate::pty::PtyPair;
use crate::tty::baud_of;
use rustix::io::Errno;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A gap longer than this between bytes means the line went idle (shorter ones are this
/// thread's own scheduling, not the line's).
const IDLE: Duration = Duration::from_millis(2);

/// Faults one direction of the line injects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Fastest rate the cable carries cleanly (0: any).
    pub max_baud: u32,
    /// Flip one bit of every Nth byte (0: never).
    pub corrupt_every: u64,
    /// Lose every Nth byte (0: never).
    pub drop_every: u64,
}

/// What crossed the line so far, per direction.
#[derive(Debug, Default)]
pub struct LineCounters {
    /// Bytes delivered.
    pub delivered: AtomicU64,
    /// Bytes lost because the receiver's buffer was full (nobody reading).
    pub overrun: AtomicU64,
    /// Bytes corrupted or dropped on purpose.
    pub faults: AtomicU64,
}

/// Two PTYs joined like a serial cable. The line runs until the process ends.
pub struct SimulatedLine {
    device: PathBuf,
    host: PathBuf,
    /// Counters of the host → device direction.
    pub to_device: Arc<LineCounters>,
    /// Counters of the device → host direction.
    pub to_host: Arc<LineCounters>,
    _pairs: [PtyPair; 2],
}

impl SimulatedLine {
    /// Opens the two PTYs, both ends at `baud` until a program changes its end, and starts
    /// moving bytes; `faults` apply to the bytes the host sends (`max_baud` to both directions).
    pub fn open(baud: u32, faults: Faults) -> std::io::Result<SimulatedLine> {
        let to_host = Faults {
            max_baud: faults.max_baud,
            ..Faults::default()
        };
        SimulatedLine::open_with(baud, faults, to_host)
    }

    /// Like [`SimulatedLine::open`], with `to_device`'s faults applied to the bytes the host
    /// sends and `to_host`'s to the bytes the device sends.
    pub fn open_with(
        baud: u32,
        to_device_faults: Faults,
        to_host_faults: Faults,
    ) -> std::io::Result<SimulatedLine> {
        let device = PtyPair::open()?;
        let host = PtyPair::open()?;
        device.set_baud(baud)?;
        host.set_baud(baud)?;
        let to_device = Arc::new(LineCounters::default());
        let to_host = Arc::new(LineCounters::default());
        spawn(
            [host.master_clone()?, host.slave_clone()?],
            [device.master_clone()?, device.slave_clone()?],
            to_device_faults,
            Arc::clone(&to_device),
        );
        spawn(
            [device.master_clone()?, device.slave_clone()?],
            [host.master_clone()?, host.slave_clone()?],
            to_host_faults,
            Arc::clone(&to_host),
        );
        Ok(SimulatedLine {
            device: device.path().to_path_buf(),
            host: host.path().to_path_buf(),
            to_device,
            to_host,
            _pairs: [device, host],
        })
    }

    /// The device's end (give it to `emberd --port`).
    pub fn device_path(&self) -> &Path {
        &self.device
    }

    /// The host's end (give it to `ember … --port`).
    pub fn host_path(&self) -> &Path {
        &self.host
    }
}

/// An end of the line: the PTY's master (where the bytes are) and its device side (whose
/// settings say the end's baud rate).
type End = [OwnedFd; 2];

fn spawn(from: End, to: End, faults: Faults, counters: Arc<LineCounters>) {
    std::thread::spawn(move || carry(&from, &to, faults, &counters));
}

/// Moves bytes from `from` to `to`, each delivered once the line has had time to send it at the
/// sender's rate; garbled when the rates differ or exceed the cable's.
fn carry(from: &End, to: &End, faults: Faults, counters: &LineCounters) {
    let [from, from_settings] = from;
    let [to, to_settings] = to;
    let mut buf = [0u8; 64];
    let mut line_free = Instant::now();
    let mut seen = 0u64;
    loop {
        let n = match rustix::io::read(from, &mut buf) {
            Ok(0) | Err(Errno::IO) => {
                // No one holds the other end open just now.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Ok(n) => n,
            Err(Errno::INTR | Errno::AGAIN) => continue,
            Err(_) => return,
        };
        let sender = baud_of(from_settings).unwrap_or(115_200).max(50);
        let receiver = baud_of(to_settings).unwrap_or(sender);
        let garbled = sender != receiver || (faults.max_baud > 0 && sender > faults.max_baud);
        let bytes_per_second = sender as f64 / 10.0;
        let mut bytes = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if garbled {
                // What a UART makes of bits at the wrong rate: not the bytes sent.
                bytes.push(b.rotate_left(3) ^ 0xA5);
                continue;
            }
            seen += 1;
            if faults.drop_every > 0 && seen.is_multiple_of(faults.drop_every) {
                counters.faults.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if faults.corrupt_every > 0 && seen.is_multiple_of(faults.corrupt_every) {
                counters.faults.fetch_add(1, Ordering::Relaxed);
                bytes.push(b ^ 0x10);
                continue;
            }
            bytes.push(b);
        }
        // A line busy since the last bytes sends these right after them (time this thread
        // overslept is not lost on a real line); an idle line starts now.
        let now = Instant::now();
        let start = if now > line_free + IDLE {
            now
        } else {
            line_free
        };
        line_free = start + Duration::from_secs_f64(n as f64 / bytes_per_second);
        if let Some(wait) = line_free.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut rest = &bytes[..];
        // While the receiver's buffer has room; once it is full, like a UART overrun, the
        // remaining bytes are lost.
        while !rest.is_empty() && writable(to) {
            match rustix::io::write(to, rest) {
                Ok(written) => rest = &rest[written..],
                Err(Errno::INTR) => {}
                Err(_) => break,
            }
        }
        counters
            .delivered
            .fetch_add((bytes.len() - rest.len()) as u64, Ordering::Relaxed);
        counters
            .overrun
            .fetch_add(rest.len() as u64, Ordering::Relaxed);
    }
}

/// Whether `fd` takes bytes now.
fn writable(fd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(fd, PollFlags::OUT)];
    matches!(poll(&mut fds, Some(&Timespec::default())), Ok(1))
        && fds[0].revents().contains(PollFlags::OUT)
}
