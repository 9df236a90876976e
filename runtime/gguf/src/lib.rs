//! GGUF, the model file format of llama.cpp: reading, dequantizing and writing.
//!
//! - [`GgufFile`] maps a file and indexes it; [`parse`] does the same for bytes in memory.
//! - [`Metadata`] holds the key/value section with typed accessors.
//! - [`TensorInfo`] describes one tensor; [`dequantize`] turns F32, F16, BF16, Q8_0, Q4_0, Q4_1,
//!   Q5_0, Q5_1, the K-quants (Q2_K … Q6_K, Q8_K), IQ4_NL and IQ4_XS data into `f32`.
//! - [`GgufWriter`] and the [`quantize`] functions write files (Ember's synthetic test models).
//!
//! Every malformed input is a [`GgufError`]; the reader never panics and never allocates more
//! than the input could describe.

#![warn(missing_docs)]

mod error;
mod kquant;
mod metadata;
mod quant;
mod reader;
mod tensor;
mod writer;

pub use error::GgufError;
pub use metadata::{Metadata, OptionalKey, Value, ValueType};
pub use quant::{dequantize, quantize};
pub use reader::{GgufFile, ParsedGguf, parse};
pub use tensor::{TensorInfo, TensorType};
pub use writer::GgufWriter;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// Default alignment of the tensor data section (`general.alignment` overrides it).
pub const DEFAULT_ALIGNMENT: u64 = 32;
