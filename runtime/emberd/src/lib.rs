//! `emberd`, Ember's device runtime: a chat with the model over a serial line.
//!
//! [`server::Server`] speaks the wire protocol over any port with the `embedded-io` traits;
//! the binary opens a real tty (or a PTY pair for development) and an Ember image.

pub mod server;
