//! Ember's int8 engine: an image's ONNX graph run by tract, with the weights read in place
//! from the image's memory mapping.
//!
//! - [`graph`]: builds the Llama-family ONNX graph (standard ops + `com.microsoft`
//!   `MatMulNBits`/`GatherBlockQuantized`, 8-bit) over the image's weights section.
//! - [`ops`]: tract ops for those two nodes that hold the mapping instead of copying weights.
//! - [`kernels`]: the int8 dot products over groups of 16 interleaved rows (AVX-512 VNNI,
//!   AVX-VNNI, AVX2, NEON with and without `sdot`, armv7 NEON, portable).
//! - [`workers`]: threads that stay alive and split each op's work once.
//! - [`TractModel`]/[`TractSession`]: load once, optimize once, run with a KV cache.

#![warn(missing_docs)]

mod attention;
pub mod cpu;
mod engine;
#[cfg(target_arch = "x86_64")]
mod exp;
pub mod graph;
pub mod kernels;
pub mod ops;
pub mod workers;

/// The revision of the int8 engine's arithmetic, raised with every change that can alter the
/// tokens it generates (and so the self-test tokens `ember quantize` records in an image).
/// 1: tract's attention over concatenated caches; 2: Ember's attention over a cache in place;
/// 3: dot products over groups of 16 interleaved rows (sums in another order); 4: attention
/// scores from keys stored in transposed tiles of eight (each score summed in another order);
/// 5: softmax normalized after the weighted sum, decoding's cache split into parts merged
/// afterwards, scores and weighted sums with fused multiply-adds on x86-64.
pub const ENGINE_REVISION: u32 = 5;

/// Bytes the int8 engine's KV cache takes per key or value number (f32).
pub const CACHE_BYTES_PER_VALUE: u64 = 4;

pub use cpu::CpuReport;
pub use engine::{OpProfile, TractModel, TractSession, self_test};
pub use graph::GraphError;
/// ONNX protobuf types (from tract-onnx).
pub use tract_onnx::pb;
