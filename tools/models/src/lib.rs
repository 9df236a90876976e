//! Models for Ember, on the machine that prepares them: fetching a recipe's model (see
//! `ember-recipes`) into Ember's cache, quantizing a GGUF file into an Ember image, and making
//! the default model that `ember chat`, `ember generate` and `ember bench` use when given none.

#![warn(missing_docs)]

pub mod default;
pub mod fetch;
pub mod quantize;
