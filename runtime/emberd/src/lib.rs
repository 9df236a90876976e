//! `emberd`, Ember's device runtime: [`driver::Driver`] runs `ember_core::device::Device` (the
//! protocol's behaviour) on a port with `ember_serial::Port` (a tty, a PTY, a line in memory).

pub mod driver;
