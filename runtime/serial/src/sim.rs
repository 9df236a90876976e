//! A serial cable simulated between two PTYs: bytes cross at the rate of a real line (10 bits
//! per byte at the baud rate), and a receiver that does not read in time loses bytes, as a
//! UART without flow control does. Optional faults flip or drop bytes.
//!
//! A PTY pair on its own moves bytes as fast as memory: useless for measuring how long a
//! transfer takes on a real line. `ember line` puts emberd on one end and the host on the other.

use crate::pty::PtyPair;
use rustix::io::Errno;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Faults one direction of the line injects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
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
    /// Opens the two PTYs and starts moving bytes at `baud`; `faults` apply to the bytes the
    /// host sends.
    pub fn open(baud: u32, faults: Faults) -> std::io::Result<SimulatedLine> {
        let device = PtyPair::open()?;
        let host = PtyPair::open()?;
        let to_device = Arc::new(LineCounters::default());
        let to_host = Arc::new(LineCounters::default());
        let bytes_per_second = baud as f64 / 10.0;
        spawn(
            host.master_clone()?,
            device.master_clone()?,
            bytes_per_second,
            faults,
            Arc::clone(&to_device),
        );
        spawn(
            device.master_clone()?,
            host.master_clone()?,
            bytes_per_second,
            Faults::default(),
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

fn spawn(
    from: OwnedFd,
    to: OwnedFd,
    bytes_per_second: f64,
    faults: Faults,
    counters: Arc<LineCounters>,
) {
    std::thread::spawn(move || carry(&from, &to, bytes_per_second, faults, &counters));
}

/// Moves bytes from `from` to `to`, each delivered once the line has had time to send it.
fn carry(
    from: &OwnedFd,
    to: &OwnedFd,
    bytes_per_second: f64,
    faults: Faults,
    counters: &LineCounters,
) {
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
        let mut bytes = Vec::with_capacity(n);
        for &b in &buf[..n] {
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
        let start = line_free.max(Instant::now());
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
