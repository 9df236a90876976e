//! What Ember's two ends need of a serial line beyond `embedded-io`'s reads and writes: timed
//! waits and rate changes. [`crate::Tty`] is the real one; [`crate::MemoryLine`] joins two ends
//! in memory for in-process tests.

use crate::tty::TtyError;
use embedded_hal::delay::DelayNs;
use embedded_io::{Read, ReadReady, Write};
use std::time::Duration;

/// A serial line: `embedded-io` reads and writes, plus what a line's ends do around them.
pub trait Port: Read + ReadReady + Write<Error = TtyError> {
    /// The line's name for messages (its device path).
    fn name(&self) -> &str;
    /// Waits until bytes can be read (`None`: forever); false when `timeout` passed first.
    fn wait_readable(&mut self, timeout: Option<Duration>) -> Result<bool, TtyError>;
    /// Waits until every byte written has left.
    fn drain(&mut self) -> Result<(), TtyError>;
    /// Switches the line to `baud` (bytes written may still be leaving: see [`Port::drain`]).
    fn set_baud(&mut self, baud: u32) -> Result<(), TtyError>;
    /// Throws away bytes received but not yet read.
    fn discard_input(&mut self) -> Result<(), TtyError>;

    /// Lets the bytes written leave, waits [`crate::SWITCH_PAUSE`] (a USB adapter may still hold
    /// some) through `delay`, then switches the line to `baud`.
    fn switch_baud(&mut self, baud: u32, delay: &mut impl DelayNs) -> Result<(), TtyError> {
        self.drain()?;
        delay.delay_ms(crate::SWITCH_PAUSE.as_millis() as u32);
        self.set_baud(baud)
    }

    /// Reads what arrives within `timeout`: 0 bytes when nothing did.
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, TtyError> {
        if self.wait_readable(Some(timeout))? {
            self.read(buf)
        } else {
            Ok(0)
        }
    }
}
