//! Ember's model runner (std): loads a model, runs it, generates text.
//!
//! - [`ReferenceModel`]: the plain-`f32` forward pass over a dequantized GGUF model, the oracle
//!   the quantized engines are checked against.
//! - [`generate`]: prefill, sample, stream whole characters, stop; with timing [`Stats`].
//! - [`ChatSession`]: a multi-turn conversation over one KV cache.
//! - [`memory`]: the process's anonymous and file-backed resident memory.

#![warn(missing_docs)]

mod chat;
mod error;
mod generate;
pub mod memory;
mod reference;
mod source;
#[cfg(test)]
mod testing;

pub use chat::ChatSession;
pub use error::EngineError;
pub use generate::{
    FinishReason, GenerateOptions, Generation, Generator, LanguageModel, MIN_PREFILL_SLICE,
    PREFILL_SLICE, Progress, SELF_TEST_CONTEXT, SELF_TEST_PROMPT, SELF_TEST_TOKENS, Stats, Step,
    generate, generate_until, self_test_tokens,
};
pub use reference::{KvCache, ReferenceModel, ReferenceSession};
pub use source::{ModelFile, WeightSource, gguf_architecture};
