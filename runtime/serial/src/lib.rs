//! Serial lines on Linux: a raw [`Tty`] (a UART such as `/dev/ttyAMA0`, or a PTY) that
//! implements the `embedded-io` traits the device code is written against, [`PtyPair`] for
//! development and tests, and the host's frame-mode [`Client`].

mod client;
mod pty;
mod tty;

pub use client::{Client, ClientError, describe_error};
pub use pty::PtyPair;
pub use tty::{Tty, TtyError};
