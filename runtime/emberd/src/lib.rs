//! `emberd`, Ember's device runtime: a chat with the model over a serial line.
//!
//! The protocol's behaviour is `ember_core::device::Device`'s; [`driver::Driver`] runs it on a
//! port with the `ember_serial::Port` traits (a real tty, a PTY pair for development, or a
//! line in memory for tests), a chat session and the model slots.

pub mod driver;
