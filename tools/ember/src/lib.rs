//! The library behind the host tool `ember`: running models here (benchmarks), an image's graph
//! for onnxruntime, synthetic test models, and devices: talking to one over a serial line,
//! packaging for a board, flashing. Recipes, fetching and quantizing live in `ember-models`.

#![warn(missing_docs)]

pub mod bench;
pub mod flash;
pub mod model;
pub mod onnx;
pub mod package;
pub mod remote;
pub mod synth;
