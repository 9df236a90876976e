//! Ember's generation runtime (std), what a device links: text out of any [`LanguageModel`].
//!
//! - [`LanguageModel`]: what an engine does (the int8 engine in `ember-tract`, the `f32`
//!   reference in `ember-reference`): feed tokens, return the next token's logits.
//! - [`Generator`], [`generate`]: prefill, sample, stream whole characters, stop; with timing
//!   [`Stats`].
//! - [`ChatSession`]: a multi-turn conversation over one KV cache.
//! - [`memory`]: the process's anonymous and file-backed resident memory.

#![warn(missing_docs)]

mod chat;
mod error;
mod generate;
pub mod memory;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use chat::{ChatFormat, ChatSession};
pub use error::EngineError;
pub use generate::{
    FinishReason, GenerateOptions, Generation, Generator, LanguageModel, MAX_PREFILL_SLICE,
    MIN_PREFILL_SLICE, PREFILL_SLICE, Progress, SELF_TEST_CONTEXT, SELF_TEST_PROMPT,
    SELF_TEST_TOKENS, Stats, Step, generate, generate_until, self_test_tokens,
};
