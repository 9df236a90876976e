//! A kiosk's board signals over embedded-hal: a status LED that shows what the device is doing
//! ([`StatusLed`], patterns in [`Status`]) and a button that cancels the reply as Ctrl-C does
//! ([`CancelButton`]).
//!
//! Both take any `embedded_hal` pin and keep no clock, start no thread and never sleep: their
//! caller passes the time in, so their tests need no hardware and no waiting. A driver polls them
//! from its loop every [`POLL_INTERVAL`] and waits in between through
//! [`embedded_hal::delay::DelayNs`] (on Linux, [`Delay`]: linux-embedded-hal's, a thread sleep).
//! On Linux, [`open_signals`] opens the lines a board profile's `[signals]` table names
//! ([`ember_board::BoardSignals`]) on the GPIO character device.
//!
//! ```no_run
//! use ember_signals::embedded_hal::delay::DelayNs;
//! use ember_signals::{Delay, POLL_INTERVAL, Signals, Status, open_signals};
//! use std::time::Instant;
//!
//! # fn status() -> Status { Status::Ready }
//! # fn cancel_reply() {}
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let board = ember_board::Board::find("/etc/ember/board.toml")?;
//! let Some(signals) = &board.signals else {
//!     return Ok(()); // the board has no LED and no button
//! };
//! let mut panel: Signals = open_signals(signals)?;
//! let start = Instant::now();
//! let mut delay = Delay;
//! loop {
//!     if panel.update(status(), start.elapsed()) {
//!         cancel_reply();
//!     }
//!     delay.delay_ms(POLL_INTERVAL.as_millis() as u32);
//! }
//! # }
//! ```

#![warn(missing_docs)]

mod button;
mod led;
#[cfg(target_os = "linux")]
mod linux;
mod panel;

pub use button::CancelButton;
pub use embedded_hal;
pub use led::{Status, StatusLed};
#[cfg(target_os = "linux")]
pub use linux::{
    CONSUMER, CdevPin, CdevPinError, Delay, Signal, Signals, SignalsError, open_signals,
};
pub use panel::Panel;

/// How often a driver should poll the button and tick the LED: a third of the default debounce
/// window (so a press counts within 40 ms of its start), and an LED change at most 10 ms late
/// (the shortest phase of a pattern is 125 ms).
pub const POLL_INTERVAL: core::time::Duration = core::time::Duration::from_millis(10);
