//! Ember's `no_std` core: everything about a chat model that needs neither Linux nor an engine.
//!
//! - [`sampler`]: turns logits into the next token (greedy, temperature, top-k, top-p,
//!   repetition penalty) with a seeded generator that gives the same tokens on every platform.
//! - [`device`] (`alloc`): the device's side of the serial line as a state machine fed bytes
//!   and time (line mode, frame mode, replies, flash and baud rules), for a thin driver.
//! - [`utf8`]: assembles streamed token bytes into whole UTF-8 characters.
//! - [`flash`]: the device's model slots and the rules of flashing an image over the line.
//! - [`blocks`]: the block formats of weights (int8, 4-bit) and activations, each defined once.
//! - [`image`]: the Ember image header (and, with `alloc`, its manifest).
//! - [`frame`]: frame-mode framing for the serial line (COBS, sequence numbers, CRC32).
//! - [`line`]: line mode: a line editor for people at a serial console, and slash commands.
//! - [`protocol`]: the messages of frame mode (postcard in bounded buffers).
//! - [`sentence`]: sentences out of streamed text, for text-to-speech.
//! - [`stop`]: stop sequences on streamed text, holding back a tail that may start one.
//!
//! Features: `alloc` adds the image manifest and conveniences that return owned values; `std`
//! implies `alloc` and `log`. The core logs through `log` (feature `log`) or `defmt` (feature
//! `defmt`, for bare metal), or not at all.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[macro_use]
mod fmt;

pub mod blocks;
#[cfg(feature = "alloc")]
pub mod device;
pub mod flash;
pub mod frame;
pub mod image;
pub mod line;
pub mod protocol;
pub mod sampler;
pub mod sentence;
pub mod stop;
#[cfg(test)]
mod test_support;
pub mod utf8;
