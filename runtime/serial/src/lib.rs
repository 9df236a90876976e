//! Serial lines on Linux: a raw [`Tty`] (a UART such as `/dev/ttyAMA0`, or a PTY) that
//! implements the `embedded-io` traits the device code is written against, [`PtyPair`] for
//! development and tests, [`SimulatedLine`] (two PTYs joined at a real line's speed),
//! [`MemoryLine`] (two ends joined in memory, for in-process tests), the [`Port`] trait both
//! ends of Ember's protocol are written against, and the host's frame-mode [`Client`].

mod client;
mod memory;
mod port;
mod pty;
mod sim;
mod tty;

pub use client::{ChatOutcome, Client, ClientError, Recovery, SWITCH_PAUSE, describe_error};
pub use memory::{MEMORY_LINE_CAPACITY, MemoryLine};
pub use port::Port;
pub use pty::{PtyPair, open_line};
pub use sim::{Faults, LineCounters, SimulatedLine};
pub use tty::{STANDARD_BAUDS, Tty, TtyError};
