//! The library behind the host tool `ember`: model recipes and fetching, synthetic test models.

#![warn(missing_docs)]

pub mod fetch;
pub mod synth;
