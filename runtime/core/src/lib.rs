//! Ember's `no_std` core: everything about a chat model that needs neither Linux nor an engine.
//!
//! - [`sampler`]: turns logits into the next token (greedy, temperature, top-k, top-p,
//!   repetition penalty) with a seeded generator that gives the same tokens on every platform.
//! - [`chat`]: renders a conversation with the model's chat template (ChatML).
//! - [`utf8`]: assembles streamed token bytes into whole UTF-8 characters.
//! - [`image`]: the Ember image header (and, with `alloc`, its manifest).
//! - [`frame`]: frame-mode framing for the serial line (COBS, sequence numbers, CRC32).
//! - [`protocol`]: the messages of frame mode (postcard in bounded buffers).
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

pub mod chat;
pub mod frame;
pub mod image;
pub mod protocol;
pub mod sampler;
pub mod utf8;
