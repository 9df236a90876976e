//! Two ends of a serial line joined in memory, for tests that run a device and a host in one
//! process: bounded buffers (a writer that finds no room for the write timeout gets
//! [`TtyError::Stalled`], as on a real line whose other end stopped reading), a rate at each end
//! (bytes sent at one rate and read at another arrive garbled), and hang-up when an end is
//! dropped.

use crate::port::Port;
use crate::tty::{DEFAULT_WRITE_TIMEOUT, TtyError};
use embedded_io::{ErrorType, Read, ReadReady, Write};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes one direction of the line holds before writes wait.
pub const MEMORY_LINE_CAPACITY: usize = 4096;

/// One direction: bytes with the rate they were sent at.
#[derive(Default)]
struct Direction {
    bytes: VecDeque<(u8, u32)>,
    /// The writing end was dropped.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<[Direction; 2]>,
    changed: Condvar,
}

/// One end of a line in memory (see [`MemoryLine::pair`]).
pub struct MemoryLine {
    shared: Arc<Shared>,
    /// Which direction this end reads (it writes the other).
    side: usize,
    name: String,
    baud: u32,
    write_timeout: Duration,
}

impl MemoryLine {
    /// Both ends of a new line at `baud`.
    pub fn pair(baud: u32) -> (MemoryLine, MemoryLine) {
        let shared = Arc::new(Shared::default());
        let end = |side: usize, name: &str| MemoryLine {
            shared: shared.clone(),
            side,
            name: name.to_string(),
            baud,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        };
        (end(0, "memory line (a)"), end(1, "memory line (b)"))
    }

    /// Sets how long a write waits for room before failing with [`TtyError::Stalled`].
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.write_timeout = timeout;
    }

    /// The rate this end is set to.
    pub fn baud(&self) -> u32 {
        self.baud
    }

    fn lock(&self) -> MutexGuard<'_, [Direction; 2]> {
        // A test thread that panicked while holding the lock left consistent data behind.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn hung_up(&self) -> TtyError {
        TtyError::HungUp {
            port: self.name.clone(),
        }
    }
}

impl Drop for MemoryLine {
    fn drop(&mut self) {
        let mut state = self.lock();
        state[1 - self.side].closed = true;
        state[self.side].closed = true;
        drop(state);
        self.shared.changed.notify_all();
    }
}

impl ErrorType for MemoryLine {
    type Error = TtyError;
}

impl Read for MemoryLine {
    /// Waits for at least one byte.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TtyError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut state = self.lock();
        loop {
            let incoming = &mut state[self.side];
            if !incoming.bytes.is_empty() {
                let mut n = 0;
                while n < buf.len() {
                    let Some((byte, baud)) = incoming.bytes.pop_front() else {
                        break;
                    };
                    // Sent at another rate: the receiver samples the wrong bits.
                    buf[n] = if baud == self.baud {
                        byte
                    } else {
                        !byte | 0x80
                    };
                    n += 1;
                }
                drop(state);
                self.shared.changed.notify_all();
                return Ok(n);
            }
            if incoming.closed {
                return Err(self.hung_up());
            }
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl ReadReady for MemoryLine {
    fn read_ready(&mut self) -> Result<bool, TtyError> {
        self.wait_readable(Some(Duration::ZERO))
    }
}

impl Write for MemoryLine {
    /// Writes some of `buf`, waiting at most the write timeout for room.
    fn write(&mut self, buf: &[u8]) -> Result<usize, TtyError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = Instant::now() + self.write_timeout;
        let mut state = self.lock();
        loop {
            let outgoing = &mut state[1 - self.side];
            if outgoing.closed {
                return Err(self.hung_up());
            }
            let room = MEMORY_LINE_CAPACITY - outgoing.bytes.len();
            if room > 0 {
                let n = room.min(buf.len());
                outgoing
                    .bytes
                    .extend(buf[..n].iter().map(|&b| (b, self.baud)));
                drop(state);
                self.shared.changed.notify_all();
                return Ok(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TtyError::Stalled {
                    port: self.name.clone(),
                    waited: self.write_timeout,
                });
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn flush(&mut self) -> Result<(), TtyError> {
        Ok(())
    }
}

impl Port for MemoryLine {
    fn name(&self) -> &str {
        &self.name
    }

    fn wait_readable(&mut self, timeout: Option<Duration>) -> Result<bool, TtyError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        loop {
            let incoming = &state[self.side];
            // Hang-up counts as ready: the next read reports it.
            if !incoming.bytes.is_empty() || incoming.closed {
                return Ok(true);
            }
            state = match deadline {
                None => self
                    .shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    self.shared
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
            };
        }
    }

    /// Bytes leave at once: nothing to wait for.
    fn drain(&mut self) -> Result<(), TtyError> {
        Ok(())
    }

    fn set_baud(&mut self, baud: u32) -> Result<(), TtyError> {
        self.baud = baud;
        Ok(())
    }

    fn discard_input(&mut self) -> Result<(), TtyError> {
        self.lock()[self.side].bytes.clear();
        self.shared.changed.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_cross_at_the_same_rate_and_garble_at_another() {
        let (mut a, mut b) = MemoryLine::pair(115_200);
        a.write_all(b"hi").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"hi");
        b.set_baud(9600).unwrap();
        a.write_all(b"hi").unwrap();
        assert_eq!(b.read(&mut buf).unwrap(), 2);
        assert_ne!(&buf[..2], b"hi");
        assert!(!b.wait_readable(Some(Duration::ZERO)).unwrap());
    }

    #[test]
    fn a_full_line_stalls_the_writer_and_a_dropped_end_hangs_up() {
        let (mut a, b) = MemoryLine::pair(115_200);
        a.set_write_timeout(Duration::from_millis(20));
        let err = a.write_all(&[1; MEMORY_LINE_CAPACITY + 1]).unwrap_err();
        assert!(matches!(err, TtyError::Stalled { .. }), "{err}");
        drop(b);
        let mut buf = [0u8; 1];
        assert!(matches!(a.read(&mut buf), Err(TtyError::HungUp { .. })));
    }
}
