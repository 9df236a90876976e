//! A serial line in raw mode: a UART device or a PTY.

use crate::port::Port;
use embedded_io::{ErrorKind, ErrorType, Read, ReadReady, Write};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{Mode, OFlags, open};
use rustix::io::Errno;
use rustix::termios::{self, ControlModes, OptionalActions, QueueSelector};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a write may wait for the other end to take bytes before it gives up.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the serial line failed.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    /// The device could not be opened.
    #[error("cannot open serial port {port}")]
    Open {
        /// The device path.
        port: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Raw mode or the baud rate could not be set.
    #[error("cannot set serial port {port} to raw mode at {baud} baud")]
    Configure {
        /// The device path.
        port: String,
        /// The baud rate asked for.
        baud: u32,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("serial port {port}")]
    Io {
        /// The device path.
        port: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The other end took no bytes for the write timeout: it stopped reading.
    #[error("serial port {port}: the other end took nothing for {waited:?}")]
    Stalled {
        /// The device path.
        port: String,
        /// How long the write waited.
        waited: Duration,
    },
    /// The line was hung up (the other side of a PTY closed).
    #[error("serial port {port} was hung up")]
    HungUp {
        /// The device path.
        port: String,
    },
}

impl embedded_io::Error for TtyError {
    fn kind(&self) -> ErrorKind {
        match self {
            TtyError::Open { .. } => ErrorKind::NotFound,
            TtyError::Configure { .. } => ErrorKind::InvalidInput,
            TtyError::Io { .. } => ErrorKind::Other,
            TtyError::Stalled { .. } => ErrorKind::TimedOut,
            TtyError::HungUp { .. } => ErrorKind::BrokenPipe,
        }
    }
}

/// A serial line in raw mode (no echo, no line editing, 8 data bits), non-blocking underneath:
/// reads wait with `poll`, writes give up after a timeout instead of blocking forever.
#[derive(Debug)]
pub struct Tty {
    fd: OwnedFd,
    /// The other side of a PTY pair, held open so the line never reads as hung up.
    _peer: Option<OwnedFd>,
    port: String,
    write_timeout: Duration,
}

impl Tty {
    /// Opens `path` (a UART or a PTY) in raw mode at `baud`.
    pub fn open(path: &Path, baud: u32) -> Result<Tty, TtyError> {
        let port = path.display().to_string();
        let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = open(path, flags, Mode::empty()).map_err(|e| TtyError::Open {
            port: port.clone(),
            source: e.into(),
        })?;
        make_raw(&fd, Some(baud)).map_err(|e| TtyError::Configure {
            port: port.clone(),
            baud,
            source: e.into(),
        })?;
        Ok(Tty {
            fd,
            _peer: None,
            port,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        })
    }

    /// Wraps an already open, already configured descriptor; `peer` is kept open alongside.
    pub(crate) fn from_fd(fd: OwnedFd, peer: Option<OwnedFd>, port: String) -> Result<Tty, Errno> {
        rustix::fs::fcntl_setfl(&fd, rustix::fs::fcntl_getfl(&fd)? | OFlags::NONBLOCK)?;
        Ok(Tty {
            fd,
            _peer: peer,
            port,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        })
    }

    /// The device path (or PTY name).
    pub fn port(&self) -> &str {
        &self.port
    }

    /// Sets how long a write waits for the other end before failing with [`TtyError::Stalled`].
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.write_timeout = timeout;
    }

    /// Switches the line to `baud` (bytes already written may still be leaving: see
    /// [`Tty::drain`]).
    pub fn set_baud(&mut self, baud: u32) -> Result<(), TtyError> {
        make_raw(&self.fd, Some(baud)).map_err(|e| TtyError::Configure {
            port: self.port.clone(),
            baud,
            source: e.into(),
        })
    }

    /// Waits until every byte written has left (a PTY master has nothing to wait for).
    pub fn drain(&mut self) -> Result<(), TtyError> {
        match termios::tcdrain(&self.fd) {
            Ok(()) | Err(Errno::NOTTY) | Err(Errno::INVAL) | Err(Errno::NOSYS) => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Throws away bytes received but not yet read.
    pub fn discard_input(&mut self) -> Result<(), TtyError> {
        match termios::tcflush(&self.fd, QueueSelector::IFlush) {
            Ok(()) => Ok(()),
            // A PTY master has no line discipline to flush: read the bytes away.
            Err(Errno::NOTTY) => {
                let mut sink = [0u8; 256];
                while self.wait_readable(Some(Duration::ZERO))? {
                    if self.read(&mut sink)? == 0 {
                        break;
                    }
                }
                Ok(())
            }
            Err(e) => Err(self.io(e)),
        }
    }

    /// Waits until bytes can be read (`None`: forever); false when `timeout` passed first.
    pub fn wait_readable(&mut self, timeout: Option<Duration>) -> Result<bool, TtyError> {
        self.wait(PollFlags::IN, timeout)
    }

    fn wait(&mut self, flags: PollFlags, timeout: Option<Duration>) -> Result<bool, TtyError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let spec = left.map(|d| Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos() as _,
            });
            let mut fds = [PollFd::new(&self.fd, flags)];
            match poll(&mut fds, spec.as_ref()) {
                // Hang-up and errors count as ready: the next read or write reports them.
                Ok(n) => return Ok(n > 0),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    fn io(&self, e: Errno) -> TtyError {
        if e == Errno::IO {
            return TtyError::HungUp {
                port: self.port.clone(),
            };
        }
        TtyError::Io {
            port: self.port.clone(),
            source: e.into(),
        }
    }
}

/// Raw mode: no echo, no line editing or signals, no CR/LF translation, 8 data bits, modem
/// control lines ignored; and the baud rate, if given.
pub(crate) fn make_raw(fd: impl AsFd, baud: Option<u32>) -> Result<(), Errno> {
    let mut settings = match termios::tcgetattr(&fd) {
        // rustix asks with TCGETS2 and falls back to TCGETS only on ENOTTY; qemu-user before
        // 9.0 (Debian 12's) answers TCGETS2 with ENOSYS, so ask the C library, which uses TCGETS.
        Err(Errno::NOSYS) => return make_raw_with_tcgets(fd.as_fd(), baud),
        other => other?,
    };
    settings.make_raw();
    settings.control_modes |= ControlModes::CLOCAL | ControlModes::CREAD;
    if let Some(baud) = baud {
        settings.set_speed(baud)?;
    }
    termios::tcsetattr(&fd, OptionalActions::Now, &settings)
}

/// [`make_raw`] through the C library's termios (TCGETS/TCSETS): only the standard baud rates.
fn make_raw_with_tcgets(fd: BorrowedFd<'_>, baud: Option<u32>) -> Result<(), Errno> {
    let speed = match baud {
        None => None,
        Some(baud) => Some(standard_speed(baud).ok_or(Errno::INVAL)?),
    };
    let raw = fd.as_raw_fd();
    let mut settings = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: `raw` is an open descriptor borrowed for this call; tcgetattr fills the whole
    // struct when it returns 0, and the struct is only read after that.
    let mut settings = unsafe {
        if libc::tcgetattr(raw, settings.as_mut_ptr()) != 0 {
            return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
        }
        settings.assume_init()
    };
    // SAFETY: `settings` is an initialized termios owned by this frame; `raw` is open.
    let status = unsafe {
        libc::cfmakeraw(&mut settings);
        settings.c_cflag |= libc::CLOCAL | libc::CREAD;
        if let Some(speed) = speed {
            libc::cfsetispeed(&mut settings, speed);
            libc::cfsetospeed(&mut settings, speed);
        }
        libc::tcsetattr(raw, libc::TCSANOW, &settings)
    };
    if status != 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    Ok(())
}

/// The baud rates every Linux serial driver knows by name, slowest first.
pub const STANDARD_BAUDS: [u32; 13] = [
    9600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600, 1_000_000, 1_500_000,
    2_000_000, 3_000_000, 4_000_000,
];

/// The baud rate `fd` is set to (its output speed), if it can be read.
pub(crate) fn baud_of(fd: impl AsFd) -> Option<u32> {
    termios::tcgetattr(&fd).ok().map(|t| t.output_speed())
}

/// The C library's constant for a standard baud rate.
fn standard_speed(baud: u32) -> Option<libc::speed_t> {
    Some(match baud {
        9600 => libc::B9600,
        19_200 => libc::B19200,
        38_400 => libc::B38400,
        57_600 => libc::B57600,
        115_200 => libc::B115200,
        230_400 => libc::B230400,
        460_800 => libc::B460800,
        921_600 => libc::B921600,
        1_000_000 => libc::B1000000,
        1_500_000 => libc::B1500000,
        2_000_000 => libc::B2000000,
        3_000_000 => libc::B3000000,
        4_000_000 => libc::B4000000,
        _ => return None,
    })
}

impl Port for Tty {
    fn name(&self) -> &str {
        &self.port
    }
    fn wait_readable(&mut self, timeout: Option<Duration>) -> Result<bool, TtyError> {
        Tty::wait_readable(self, timeout)
    }
    fn drain(&mut self) -> Result<(), TtyError> {
        Tty::drain(self)
    }
    fn set_baud(&mut self, baud: u32) -> Result<(), TtyError> {
        Tty::set_baud(self, baud)
    }
    fn discard_input(&mut self) -> Result<(), TtyError> {
        Tty::discard_input(self)
    }
}

impl ErrorType for Tty {
    type Error = TtyError;
}

impl Read for Tty {
    /// Waits for at least one byte.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TtyError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match rustix::io::read(&self.fd, &mut *buf) {
                Ok(0) => {
                    return Err(TtyError::HungUp {
                        port: self.port.clone(),
                    });
                }
                Ok(n) => return Ok(n),
                Err(Errno::AGAIN) => {
                    self.wait_readable(None)?;
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(self.io(e)),
            }
        }
    }
}

impl ReadReady for Tty {
    fn read_ready(&mut self) -> Result<bool, TtyError> {
        self.wait_readable(Some(Duration::ZERO))
    }
}

impl Write for Tty {
    /// Writes some of `buf`, waiting at most the write timeout for room.
    fn write(&mut self, buf: &[u8]) -> Result<usize, TtyError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match rustix::io::write(&self.fd, buf) {
                Ok(n) => return Ok(n),
                Err(Errno::AGAIN) => {
                    if !self.wait(PollFlags::OUT, Some(self.write_timeout))? {
                        return Err(TtyError::Stalled {
                            port: self.port.clone(),
                            waited: self.write_timeout,
                        });
                    }
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    fn flush(&mut self) -> Result<(), TtyError> {
        Ok(())
    }
}
