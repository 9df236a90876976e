use crate::{TensorType, ValueType};

/// Everything that can be wrong with a GGUF file or a request made of it.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: it starts with {found:02x?} instead of \"GGUF\"")]
    BadMagic {
        /// The first bytes found.
        found: [u8; 4],
    },
    /// A GGUF version this reader does not know (2 and 3 are supported).
    #[error("unsupported GGUF version {0} (Ember reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    /// The file ends before a field it promises.
    #[error("truncated GGUF: needed {needed} more bytes at offset {offset} for {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where.
        offset: u64,
        /// How many bytes were missing.
        needed: u64,
    },
    /// A count or length larger than the rest of the file could hold.
    #[error("corrupt GGUF: {what} of {count} at offset {offset} cannot fit in the file")]
    ImplausibleCount {
        /// What was counted.
        what: &'static str,
        /// The count found.
        count: u64,
        /// Where.
        offset: u64,
    },
    /// A metadata value type id outside the specification.
    #[error("corrupt GGUF: unknown metadata value type {id} at offset {offset}")]
    UnknownValueType {
        /// The id found.
        id: u32,
        /// Where.
        offset: u64,
    },
    /// A string that is not UTF-8.
    #[error("corrupt GGUF: string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where.
        offset: u64,
    },
    /// The same metadata key or tensor name twice.
    #[error("corrupt GGUF: duplicate {what} {name:?}")]
    Duplicate {
        /// "metadata key" or "tensor".
        what: &'static str,
        /// The repeated name.
        name: String,
    },
    /// `general.alignment` is zero, not a power of two, or not an integer.
    #[error("corrupt GGUF: general.alignment must be a power of two, found {0}")]
    BadAlignment(u64),
    /// A tensor type id this reader does not know.
    #[error(
        "tensor {name:?} has ggml type {id}{}, which Ember does not read (it reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K–Q6_K, Q8_K, IQ4_NL and IQ4_XS)",
        ggml_type_label(.id)
    )]
    UnknownTensorType {
        /// The tensor.
        name: String,
        /// The type id.
        id: u32,
    },
    /// A tensor with no dimensions, too many, a zero or overflowing size, or a row that is not
    /// a whole number of quantization blocks.
    #[error("tensor {name:?} has an invalid shape {dims:?} for type {ty}")]
    BadShape {
        /// The tensor.
        name: String,
        /// Its dimensions, fastest first.
        dims: Vec<u64>,
        /// Its type.
        ty: TensorType,
    },
    /// A tensor whose data lies outside the file or is not aligned.
    #[error("tensor {name:?} data at offset {offset} (+{size} bytes) is {problem}")]
    BadTensorData {
        /// The tensor.
        name: String,
        /// Offset relative to the data section.
        offset: u64,
        /// Size in bytes.
        size: u64,
        /// "misaligned" or "outside the file".
        problem: &'static str,
    },
    /// A required metadata key is absent.
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    /// A metadata key holds a different type than required.
    #[error("metadata key {key:?} holds {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What the caller needed.
        expected: &'static str,
        /// What the file has.
        found: ValueType,
    },
    /// A required tensor is absent.
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    /// A tensor type Ember cannot dequantize.
    #[error(
        "tensor {name:?} has type {ty}, which Ember cannot dequantize (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS)"
    )]
    UnsupportedType {
        /// The tensor.
        name: String,
        /// Its type.
        ty: TensorType,
    },
}

/// ` (NAME)` for the ggml types Ember does not read, by id; empty for ids ggml does not have.
fn ggml_type_label(id: &u32) -> String {
    let name = match id {
        4 | 5 => "Q4_2/Q4_3, removed from ggml",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        21 => "IQ3_S",
        22 => "IQ2_S",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return String::new(),
    };
    format!(" ({name})")
}
