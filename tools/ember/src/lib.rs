//! The library behind the host tool `ember`: model recipes and fetching, quantizing models into
//! Ember images, synthetic test models.

#![warn(missing_docs)]

pub mod bench;
pub mod fetch;
pub mod model;
pub mod quantize;
pub mod synth;
