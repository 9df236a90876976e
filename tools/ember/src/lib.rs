//! The library behind the host tool `ember`: model recipes and fetching, quantizing models into
//! Ember images, synthetic test models, benchmarks, and talking to a device over a serial line.

#![warn(missing_docs)]

pub mod bench;
pub mod fetch;
pub mod flash;
pub mod model;
pub mod package;
pub mod quantize;
pub mod remote;
pub mod synth;
