//! The library behind the host tool `ember`: model recipes and fetching, synthetic test models.

pub mod fetch;
pub mod synth;
