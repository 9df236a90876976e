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

/// What a model's KV cache takes in the int8 engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheNeeds {
    /// Bytes per context position of the layers that attend to the whole context.
    pub bytes_per_position: u64,
    /// Bytes per position of the sliding-window layers (0 without any).
    pub windowed_bytes_per_position: u64,
    /// The most positions a sliding-window layer's cache holds: its window, the positions it
    /// drops together and a prefill slice.
    pub window_positions: usize,
}

impl CacheNeeds {
    /// The cache of `architecture`'s model.
    pub fn of(architecture: &ember_core::image::Architecture) -> Self {
        let per_layer = (architecture.kv_dim() as u64).saturating_mul(2 * CACHE_BYTES_PER_VALUE);
        let (mut global, mut windowed, mut window) = (0u64, 0u64, 0usize);
        for layer in 0..architecture.n_layers {
            match architecture.window(layer) {
                Some(w) => {
                    windowed = windowed.saturating_add(per_layer);
                    window = window.max(w);
                }
                None => global = global.saturating_add(per_layer),
            }
        }
        CacheNeeds {
            bytes_per_position: global,
            windowed_bytes_per_position: windowed,
            window_positions: match window {
                0 => 0,
                w => w.saturating_add(attention::WINDOW_SLACK).saturating_add(
                    ember_engine::MAX_PREFILL_SLICE + ember_engine::MIN_PREFILL_SLICE,
                ),
            },
        }
    }
}

pub use cpu::CpuReport;
pub use engine::{OpProfile, TractModel, TractSession, self_test};
pub use graph::GraphError;
/// ONNX protobuf types (from tract-onnx).
pub use tract_onnx::pb;
