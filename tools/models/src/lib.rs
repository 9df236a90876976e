//! Models for Ember, on the machine that prepares them: recipes (`models/`), fetching a recipe's
//! model into Ember's cache, quantizing a GGUF file into an Ember image, and the default model
//! that `ember chat`, `ember generate`, `ember bench` and `emberd` use when given none.

#![warn(missing_docs)]

pub mod default;
pub mod fetch;
pub mod quantize;
