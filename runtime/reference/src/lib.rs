//! Ember's reference side, for the host tool and the tests (a device links none of it): model
//! files of either kind and the plain-`f32` oracle the int8 engine is checked against.
//!
//! - [`ModelFile`]/[`WeightSource`]: opens a GGUF file or an Ember image, with its weights,
//!   tokenizer and chat template.
//! - [`gguf`]: a GGUF file's architecture and tokenizer, from its metadata.
//! - [`ReferenceModel`]/[`ReferenceSession`]: the forward pass in plain `f32` over dequantized
//!   weights, a [`LanguageModel`](ember_engine::LanguageModel) like the int8 engine.

#![warn(missing_docs)]

mod error;
pub mod gguf;
mod reference;
mod source;

pub use error::ModelError;
pub use reference::{KvCache, ReferenceModel, ReferenceSession};
pub use source::{ModelFile, WeightSource};
