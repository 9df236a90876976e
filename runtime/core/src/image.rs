//! The Ember image: one file holding everything the device needs to run a model.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "EMBERIMG"
//!      8     2  format version (little-endian u16), currently 5
//!     10     2  reserved, zero
//!     12     4  manifest length in bytes (u32)
//!     16    32  SHA-256 of the manifest bytes
//!     48     8  total file length (u64)
//!     56     4  image version (u32), a copy of the manifest's (0 in images made before it)
//!     60     4  reserved, zero
//!     64     …  manifest (postcard), then the sections, each starting on a 64-byte boundary
//! ```
//!
//! The header is read without allocation; the [`Manifest`] (with `alloc`) describes the model and
//! lists every section with its offset, length and SHA-256.
//!
//! The *image version* is the release counter of one image (`ember quantize --image-version`),
//! not the format version: a device refuses an image older than the one it serves. It lives in
//! the manifest (so it is part of the model hash) and, copied, in the header (so a device can
//! refuse an older image from its header alone, before receiving it); [`ImageHeader::parse`]
//! reads it, and a full parse checks that both agree.

use core::fmt;

/// The eight bytes every Ember image starts with.
pub const IMAGE_MAGIC: [u8; 8] = *b"EMBERIMG";
/// The image format version this code reads and writes.
pub const IMAGE_VERSION: u16 = 5;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Sections start on multiples of this (cache lines; 4-byte scales stay aligned for mmap).
pub const SECTION_ALIGN: u64 = 64;
/// Largest manifest accepted (guards allocation on corrupt input).
pub const MAX_MANIFEST_LEN: u32 = 64 << 20;
/// The manifest's `quantization` of an image whose matrices are all int8 blocks of 32.
pub const QUANT_INT8: &str = "int8-block32";
/// The manifest's `quantization` of an image whose layers' matrices are 4-bit blocks of 32
/// (the token embedding int8).
pub const QUANT_Q4: &str = "q4-block32";

/// What is wrong with an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// Fewer bytes than the header or the length it declares.
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        found: u64,
    },
    /// The file does not start with `EMBERIMG`.
    BadMagic,
    /// An image format version this build does not read.
    UnsupportedVersion(u16),
    /// Reserved header bytes are not zero, the manifest length is implausible, or the header's
    /// image version is not the manifest's.
    CorruptHeader,
    /// The file is longer than its header says (something was appended or overwritten).
    TrailingBytes {
        /// Length in the header.
        expected: u64,
        /// Length of the file.
        found: u64,
    },
    /// The manifest's SHA-256 is not the one in the header.
    ManifestHashMismatch,
    /// The manifest does not decode.
    BadManifest,
    /// A section lies outside the file, overlaps the header, or is misaligned.
    BadSection,
    /// A section's SHA-256 differs from the manifest's.
    SectionHashMismatch,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Truncated { needed, found } => write!(
                f,
                "truncated Ember image: {found} bytes, needs {needed} (an interrupted copy?)"
            ),
            ImageError::BadMagic => f.write_str("not an Ember image (no EMBERIMG magic)"),
            ImageError::UnsupportedVersion(v) => write!(
                f,
                "Ember image format version {v} is not supported (this build reads version {IMAGE_VERSION})"
            ),
            ImageError::CorruptHeader => f.write_str("corrupt Ember image header"),
            ImageError::TrailingBytes { expected, found } => write!(
                f,
                "Ember image is {found} bytes but its header says {expected}"
            ),
            ImageError::ManifestHashMismatch => {
                f.write_str("Ember image manifest does not match its SHA-256 (corrupt image)")
            }
            ImageError::BadManifest => f.write_str("Ember image manifest does not decode"),
            ImageError::BadSection => {
                f.write_str("Ember image section lies outside the file or is misaligned")
            }
            ImageError::SectionHashMismatch => {
                f.write_str("Ember image section does not match its SHA-256 (corrupt image)")
            }
        }
    }
}

impl core::error::Error for ImageError {}

/// The fixed 64-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Format version.
    pub version: u16,
    /// Length of the manifest that follows the header.
    pub manifest_len: u32,
    /// SHA-256 of the manifest.
    pub manifest_sha256: [u8; 32],
    /// Length of the whole file.
    pub file_len: u64,
    /// The image version (the manifest's, copied here).
    pub image_version: u32,
}

impl ImageHeader {
    /// Reads and checks the header at the start of `bytes` (the whole file or its first 64 bytes:
    /// only the header's own fields are checked here).
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        if bytes.len() < HEADER_LEN {
            if bytes.len() >= 8 && bytes[..8] != IMAGE_MAGIC {
                return Err(ImageError::BadMagic);
            }
            return Err(ImageError::Truncated {
                needed: HEADER_LEN as u64,
                found: bytes.len() as u64,
            });
        }
        if bytes[..8] != IMAGE_MAGIC {
            return Err(ImageError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != IMAGE_VERSION {
            return Err(ImageError::UnsupportedVersion(version));
        }
        let manifest_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        let mut manifest_sha256 = [0u8; 32];
        manifest_sha256.copy_from_slice(&bytes[16..48]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[48..56]);
        let file_len = u64::from_le_bytes(len);
        let image_version = u32::from_le_bytes([bytes[56], bytes[57], bytes[58], bytes[59]]);
        let reserved_zero = bytes[10..12].iter().chain(&bytes[60..64]).all(|&b| b == 0);
        if !reserved_zero
            || manifest_len > MAX_MANIFEST_LEN
            || file_len < HEADER_LEN as u64 + manifest_len as u64
        {
            return Err(ImageError::CorruptHeader);
        }
        Ok(ImageHeader {
            version,
            manifest_len,
            manifest_sha256,
            file_len,
            image_version,
        })
    }

    /// The 64 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&IMAGE_MAGIC);
        out[8..10].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.manifest_len.to_le_bytes());
        out[16..48].copy_from_slice(&self.manifest_sha256);
        out[48..56].copy_from_slice(&self.file_len.to_le_bytes());
        out[56..60].copy_from_slice(&self.image_version.to_le_bytes());
        out
    }

    /// Byte range of the manifest in the file.
    pub fn manifest_range(&self) -> core::ops::Range<usize> {
        HEADER_LEN..HEADER_LEN + self.manifest_len as usize
    }
}

#[cfg(feature = "alloc")]
pub use manifest::*;

#[cfg(feature = "alloc")]
mod manifest {
    use super::{ImageError, SECTION_ALIGN};
    use crate::blocks::{int4, int8, scale_bytes};
    use alloc::{string::String, vec::Vec};
    use serde::{Deserialize, Serialize};

    /// Everything about the model except the bulk data, which lives in sections.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Manifest {
        /// Human-readable model name.
        pub model_name: String,
        /// Architecture and hyper-parameters.
        pub architecture: Architecture,
        /// How to build the tokenizer (its vocabulary is the section named here).
        pub tokenizer: TokenizerSpec,
        /// The model's chat template (Jinja source), if it has one.
        pub chat_template: Option<String>,
        /// Sampling settings the device uses unless told otherwise.
        pub default_sampling: SamplingDefaults,
        /// Name of the weight quantization scheme: [`QUANT_INT8`](super::QUANT_INT8) or
        /// [`QUANT_Q4`](super::QUANT_Q4).
        pub quantization: String,
        /// Every tensor: where it is and how it is encoded.
        pub tensors: Vec<TensorEntry>,
        /// Every section of the file.
        pub sections: Vec<SectionEntry>,
        /// What a device runs before it switches to this image.
        pub self_test: SelfTest,
        /// The image's release counter: a device refuses an image whose version is lower than
        /// its active image's. Encoded after the other fields, and only when it is not 0, so
        /// images made before it existed decode as version 0 (see [`Manifest::to_bytes`]).
        #[serde(skip)]
        pub image_version: u32,
    }

    /// A prompt and the tokens the int8 engine generated for it greedily when the image was
    /// made. A device that has received the image runs it on trial and switches to it only if
    /// it generates the same tokens: the weights arrived intact *and* its engine computes them
    /// the way the host's did.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SelfTest {
        /// Plain text (no chat template), tokenized as the model's prompts are.
        pub prompt: String,
        /// The greedy continuation, up to the end-of-sequence token (not included).
        pub tokens: Vec<u32>,
    }

    /// The shape of a decoder (SmolLM2, Llama, Qwen2, Qwen3, Gemma 3): what the manifest
    /// records and what every engine builds from.
    ///
    /// The counts are `usize` in memory and varints on the wire (postcard writes a `usize` as
    /// the `u64` varint, the same bytes as a `u32` varint for any count below 2³²). What sets
    /// a family apart from Llama ([`Variant`]) is encoded after the manifest's other fields
    /// (see [`Manifest::to_bytes`]), so a Llama image's bytes are what they were before
    /// families existed.
    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    pub struct Architecture {
        /// Number of transformer blocks.
        pub n_layers: usize,
        /// Width of the residual stream.
        pub n_embd: usize,
        /// Hidden width of the feed-forward network.
        pub n_ff: usize,
        /// Number of query heads.
        pub n_head: usize,
        /// Number of key/value heads (grouped-query attention when fewer than `n_head`).
        pub n_head_kv: usize,
        /// Number of dimensions of each head that RoPE rotates.
        pub rope_dim: usize,
        /// RoPE base frequency.
        pub rope_base: f32,
        /// Epsilon of RMSNorm.
        pub rms_eps: f32,
        /// Longest sequence the model was trained for.
        pub context_length: usize,
        /// Vocabulary size (rows of the embedding).
        pub vocab_size: usize,
        /// What the family adds to a Llama block (all defaults for Llama).
        #[serde(skip)]
        pub variant: Variant,
    }

    /// A decoder family: what its blocks compute beyond Llama's (RMSNorm, RoPE on adjacent
    /// pairs, grouped-query attention, SwiGLU).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
    pub enum Family {
        /// Llama, SmolLM2: the baseline.
        #[default]
        Llama,
        /// Qwen2 / Qwen2.5: biases on the query, key and value projections.
        Qwen2,
        /// Qwen3: an RMSNorm over each query and key head before RoPE.
        Qwen3,
        /// Gemma 3: the embedding scaled by √width, per-head query/key norms, an RMSNorm after
        /// attention and after the FFN as well as before, GeGLU (tanh GELU), sliding-window
        /// layers with their own RoPE base between global ones.
        Gemma3,
    }

    impl Family {
        /// The name GGUF's `general.architecture` gives the family.
        pub fn name(self) -> &'static str {
            match self {
                Family::Llama => "llama",
                Family::Qwen2 => "qwen2",
                Family::Qwen3 => "qwen3",
                Family::Gemma3 => "gemma3",
            }
        }

        /// The family GGUF's `general.architecture` names, if Ember runs it.
        pub fn from_name(name: &str) -> Option<Self> {
            [Family::Llama, Family::Qwen2, Family::Qwen3, Family::Gemma3]
                .into_iter()
                .find(|f| f.name() == name)
        }

        /// Whether the query, key and value projections add a bias.
        pub fn has_qkv_bias(self) -> bool {
            self == Family::Qwen2
        }

        /// Whether each query and key head is RMS-normalized (its own weights) before RoPE.
        pub fn has_qk_norm(self) -> bool {
            matches!(self, Family::Qwen3 | Family::Gemma3)
        }

        /// Whether the block is Gemma's: embedding scaled by √width, norms after attention and
        /// FFN, GeGLU instead of SwiGLU.
        pub fn is_gemma(self) -> bool {
            self == Family::Gemma3
        }
    }

    /// What an [`Architecture`] adds to Llama's shape: the family and the hyper-parameters only
    /// some families have. An image made before families existed decodes with the default (a
    /// Llama).
    #[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
    pub struct Variant {
        /// The family.
        pub family: Family,
        /// Width of one head when it is not `n_embd / n_head` (0: it is).
        pub head_dim: usize,
        /// Positions a sliding-window layer sees, its own included (0: every layer sees the
        /// whole context).
        pub sliding_window: usize,
        /// With a window: layers `g − 1`, `2g − 1`, … attend globally, the others within the
        /// window (0: every layer within the window).
        pub global_every: usize,
        /// RoPE base frequency of the sliding-window layers.
        pub local_rope_base: f32,
        /// Final logits become `cap · tanh(logits / cap)` (0: not capped).
        pub logit_softcap: f32,
    }

    impl Architecture {
        /// Width of one head: `n_embd / n_head` (0 without heads, which [`check`](Self::check)
        /// refuses).
        pub fn head_dim(&self) -> usize {
            match self.variant.head_dim {
                0 => self.n_embd.checked_div(self.n_head).unwrap_or(0),
                explicit => explicit,
            }
        }

        /// Width of all query heads together: `n_head × head_dim` (saturating).
        pub fn q_dim(&self) -> usize {
            self.n_head.saturating_mul(self.head_dim())
        }

        /// The family.
        pub fn family(&self) -> Family {
            self.variant.family
        }

        /// Positions layer `layer` attends over, its own included: the window for a
        /// sliding-window layer, `None` for a global one.
        pub fn window(&self, layer: usize) -> Option<usize> {
            let v = &self.variant;
            let global = v.global_every != 0 && (layer + 1).is_multiple_of(v.global_every);
            (v.sliding_window != 0 && !global).then_some(v.sliding_window)
        }

        /// RoPE base frequency of layer `layer`.
        pub fn rope_base_of(&self, layer: usize) -> f32 {
            match self.window(layer) {
                Some(_) => self.variant.local_rope_base,
                None => self.rope_base,
            }
        }

        /// Width of the keys (and values) of one position: `n_head_kv × head_dim` (saturating:
        /// a shape from a file may be absurd).
        pub fn kv_dim(&self) -> usize {
            self.n_head_kv.saturating_mul(self.head_dim())
        }

        /// Numbers of KV cache one context position takes: keys and values of every layer
        /// (saturating at `u64::MAX`, which fits no board, rather than wrapping).
        pub fn cache_values_per_position(&self) -> u64 {
            (self.n_layers as u64)
                .saturating_mul(2)
                .saturating_mul(self.kv_dim() as u64)
        }

        /// Refuses inconsistent shapes: a zero dimension, heads that do not divide the width
        /// (or KV heads the heads), a RoPE dimension that is odd or wider than a head, a RoPE
        /// base or RMSNorm epsilon out of range.
        pub fn check(&self) -> Result<(), ArchitectureError> {
            let bad = |why| Err(ArchitectureError(why));
            if [
                self.n_layers,
                self.n_embd,
                self.n_ff,
                self.n_head,
                self.n_head_kv,
                self.context_length,
                self.vocab_size,
            ]
            .contains(&0)
            {
                return bad("a dimension is zero");
            }
            if (self.variant.head_dim == 0 && !self.n_embd.is_multiple_of(self.n_head))
                || !self.n_head.is_multiple_of(self.n_head_kv)
            {
                return bad("heads do not divide the width, or KV heads do not divide heads");
            }
            if self.rope_dim > self.head_dim() || !self.rope_dim.is_multiple_of(2) {
                return bad("RoPE dimension must be even and at most the head width");
            }
            if !(self.rope_base.is_finite() && self.rope_base > 0.0 && self.rms_eps >= 0.0) {
                return bad("RoPE base or RMSNorm epsilon out of range");
            }
            let v = &self.variant;
            if v.sliding_window != 0 && !(v.local_rope_base.is_finite() && v.local_rope_base > 0.0)
            {
                return bad("the sliding-window layers' RoPE base is out of range");
            }
            if !(v.logit_softcap.is_finite() && v.logit_softcap >= 0.0) {
                return bad("logit soft-capping out of range");
            }
            Ok(())
        }
    }

    /// Why an [`Architecture`] does not describe a decoder that can run.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ArchitectureError(pub &'static str);

    impl core::fmt::Display for ArchitectureError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "invalid model configuration: {}", self.0)
        }
    }

    impl core::error::Error for ArchitectureError {}

    /// The tokenizer's kind and special tokens; its vocabulary is a [`TokenizerData`] section.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct TokenizerSpec {
        /// Tokenizer model (`gpt2`: byte-level BPE).
        pub model: String,
        /// Pre-tokenizer name (`smollm`, `gpt2`, …).
        pub pre: String,
        /// Beginning-of-sequence token.
        pub bos: Option<u32>,
        /// End-of-sequence (end of turn) token.
        pub eos: u32,
        /// Whether prompts start with `bos`.
        pub add_bos: bool,
        /// Name of the section holding the [`TokenizerData`].
        pub section: String,
    }

    /// The tokenizer's vocabulary (postcard-encoded in its own section).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct TokenizerData {
        /// Token strings, by id.
        pub tokens: Vec<String>,
        /// GGUF token types, by id.
        pub token_types: Vec<i32>,
        /// BPE merge rules, `"a b"`, by rank.
        pub merges: Vec<String>,
        /// SentencePiece scores, by id (empty for byte-level BPE). Encoded after the other
        /// fields only when there are any, so a byte-level BPE section is what it was before.
        #[serde(skip)]
        pub scores: Vec<f32>,
    }

    /// Default sampling settings.
    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    #[allow(missing_docs)] // as in `sampler::SamplingConfig`
    pub struct SamplingDefaults {
        pub temperature: f32,
        pub top_k: u32,
        pub top_p: f32,
        pub repetition_penalty: f32,
    }

    /// A byte range of the file with its digest.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SectionEntry {
        /// Its name (`tokenizer`, `weights`, …).
        pub name: String,
        /// Absolute offset, a multiple of 64.
        pub offset: u64,
        /// Length in bytes.
        pub length: u64,
        /// SHA-256 of its bytes.
        pub sha256: [u8; 32],
    }

    /// How a tensor's values are stored.
    ///
    /// For the block encoding a tensor of `rows × cols` (`cols` a multiple of 32) is stored as
    /// two arrays, each starting on a 64-byte boundary: the quantized bytes, then one
    /// little-endian f32 scale per block of 32 — both with the rows taken in groups of
    /// [`ROW_GROUP`](crate::blocks::ROW_GROUP) and interleaved the way the int8 kernels stream
    /// them (the formats are [`crate::blocks`]'); a last partial group is padded with zero rows.
    /// De-interleaved ([`TensorEntry::layout`]'s `standard` lengths), the arrays are exactly
    /// ONNX `com.microsoft.MatMulNBits` (bits 8, block 32, default zero point 128) and
    /// `GatherBlockQuantized`: `ember export-onnx` writes them so for onnxruntime.
    ///
    /// The 4-bit encoding adds a third array, one f32 minimum per block (see
    /// [`nibble_index`](crate::blocks::int4::nibble_index) for its quants). It holds GGUF `Q4_0` (m = −8d)
    /// and `Q4_1` blocks exactly; `ember export-onnx` writes it as `MatMulNBits` bits 4 with
    /// float zero points −m/d.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum TensorEncoding {
        /// Little-endian f32 values.
        F32,
        /// Symmetric int8 in blocks of 32: value = scale · (u − 128), u a u8; rows interleaved
        /// in groups of [`ROW_GROUP`](crate::blocks::ROW_GROUP) ([`crate::blocks::int8`]).
        Int8Block32,
        /// Asymmetric 4-bit in blocks of 32: value = d · q + m, q a nibble 0–15, with an f32
        /// scale d and an f32 minimum m per block; rows interleaved in groups of
        /// [`ROW_GROUP`](crate::blocks::ROW_GROUP) ([`crate::blocks::int4`]).
        Int4Block32,
    }

    /// Where one tensor lives.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TensorEntry {
        /// GGUF name, e.g. `blk.0.attn_q.weight`.
        pub name: String,
        /// Dimensions, fastest first (`dims[0]` is the row length).
        pub dims: Vec<u64>,
        /// Storage encoding.
        pub encoding: TensorEncoding,
        /// Index into [`Manifest::sections`].
        pub section: u32,
        /// Offset within that section (a multiple of 64).
        pub offset: u64,
        /// Bytes it occupies (padding included).
        pub length: u64,
    }

    /// Rounds `n` up to the section alignment.
    pub fn align_up(n: u64) -> u64 {
        n.div_ceil(SECTION_ALIGN) * SECTION_ALIGN
    }

    impl TensorEntry {
        /// Values in a row and number of rows.
        pub fn rows(&self) -> (u64, u64) {
            let cols = self.dims.first().copied().unwrap_or(0);
            (cols, self.dims.iter().skip(1).product())
        }

        /// Offsets (relative to the tensor) and lengths of its quants and scales arrays.
        pub fn layout(encoding: TensorEncoding, cols: u64, rows: u64) -> BlockLayout {
            let count = cols * rows;
            match encoding {
                TensorEncoding::F32 => BlockLayout {
                    quants: (0, count * 4),
                    scales: (align_up(count * 4), 0),
                    mins: (align_up(count * 4), 0),
                    standard: (count * 4, 0, 0),
                },
                TensorEncoding::Int8Block32 => {
                    let quants = int8::quant_bytes(cols, rows);
                    let scales = (align_up(quants), scale_bytes(cols, rows));
                    BlockLayout {
                        quants: (0, quants),
                        scales,
                        mins: (align_up(scales.0 + scales.1), 0),
                        standard: (count, count / 32 * 4, 0),
                    }
                }
                TensorEncoding::Int4Block32 => {
                    let quants = int4::quant_bytes(cols, rows);
                    let scales = (align_up(quants), scale_bytes(cols, rows));
                    BlockLayout {
                        quants: (0, quants),
                        scales,
                        mins: (align_up(scales.0 + scales.1), scales.1),
                        standard: (count / 2, count / 32 * 4, count / 32 * 4),
                    }
                }
            }
        }
    }

    /// (offset, length) of a tensor's three arrays as stored (an unused array has length 0),
    /// and their lengths in the standard row-major layout (without padding rows).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[allow(missing_docs)]
    pub struct BlockLayout {
        pub quants: (u64, u64),
        pub scales: (u64, u64),
        pub mins: (u64, u64),
        pub standard: (u64, u64, u64),
    }

    impl BlockLayout {
        /// Bytes the tensor occupies, padded.
        pub fn total(&self) -> u64 {
            align_up(self.mins.0 + self.mins.1)
                .max(align_up(self.scales.0 + self.scales.1))
                .max(align_up(self.quants.1))
        }
    }

    impl TokenizerData {
        /// Encodes the vocabulary (postcard), then the scores if there are any.
        pub fn encode(&self) -> Vec<u8> {
            // Serializing plain data into a Vec cannot fail.
            let mut bytes = postcard::to_allocvec(self).unwrap_or_default();
            if !self.scores.is_empty() {
                bytes.extend(postcard::to_allocvec(&self.scores).unwrap_or_default());
            }
            bytes
        }

        /// Decodes a vocabulary: its fields, then the scores if bytes follow.
        pub fn decode(bytes: &[u8]) -> Result<Self, ImageError> {
            let (mut data, rest): (TokenizerData, _) =
                postcard::take_from_bytes(bytes).map_err(|_| ImageError::BadManifest)?;
            if !rest.is_empty() {
                match postcard::take_from_bytes(rest) {
                    Ok((scores, [])) => data.scores = scores,
                    _ => return Err(ImageError::BadManifest),
                }
            }
            Ok(data)
        }
    }

    impl Manifest {
        /// Encodes the manifest (postcard), followed by the image version as a varint unless
        /// it is 0 and the architecture's [`Variant`] is a Llama's, then that variant unless it
        /// is a Llama's: a Llama image is what it was before either existed.
        pub fn to_bytes(&self) -> Vec<u8> {
            // Serializing plain data into a Vec cannot fail.
            let mut bytes = postcard::to_allocvec(self).unwrap_or_default();
            let variant = self.architecture.variant;
            let llama = variant == Variant::default();
            if self.image_version != 0 || !llama {
                bytes.extend(postcard::to_allocvec(&self.image_version).unwrap_or_default());
            }
            if !llama {
                bytes.extend(postcard::to_allocvec(&variant).unwrap_or_default());
            }
            bytes
        }

        /// Decodes a manifest: its fields, then the image version if bytes follow (0 if not),
        /// then the architecture's variant if bytes follow (a Llama's if not).
        pub fn from_bytes(bytes: &[u8]) -> Result<Self, ImageError> {
            let (mut manifest, rest): (Manifest, _) =
                postcard::take_from_bytes(bytes).map_err(|_| ImageError::BadManifest)?;
            if !rest.is_empty() {
                let (version, rest) =
                    postcard::take_from_bytes(rest).map_err(|_| ImageError::BadManifest)?;
                manifest.image_version = version;
                if !rest.is_empty() {
                    match postcard::take_from_bytes(rest) {
                        Ok((variant, [])) => manifest.architecture.variant = variant,
                        _ => return Err(ImageError::BadManifest),
                    }
                }
            }
            Ok(manifest)
        }

        /// The section called `name`.
        pub fn section(&self, name: &str) -> Option<&SectionEntry> {
            self.sections.iter().find(|s| s.name == name)
        }

        /// The tensor called `name`.
        pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
            self.tensors.iter().find(|t| t.name == name)
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn an_architecture_is_written_as_u32_counts_were() {
        let a = Architecture {
            n_layers: 30,
            n_embd: 576,
            n_ff: 1536,
            n_head: 9,
            n_head_kv: 3,
            rope_dim: 64,
            rope_base: 100_000.0,
            rms_eps: 1e-5,
            context_length: 8192,
            vocab_size: 49152,
            variant: Variant::default(),
        };
        let as_u32 = (
            30u32,
            576u32,
            1536u32,
            9u32,
            3u32,
            64u32,
            100_000.0f32,
            1e-5f32,
        );
        let mut expected = postcard::to_allocvec(&as_u32).unwrap();
        expected.extend(postcard::to_allocvec(&(8192u32, 49152u32)).unwrap());
        assert_eq!(postcard::to_allocvec(&a).unwrap(), expected);
        assert_eq!(postcard::from_bytes::<Architecture>(&expected).unwrap(), a);
        assert_eq!((a.head_dim(), a.kv_dim()), (64, 192));
        assert_eq!(a.cache_values_per_position(), 30 * 2 * 192);
        // A shape that passes its check with counts whose product overflows (found by the
        // image_header fuzz target: it wrapped, so an absurd model could seem to fit a board).
        let huge = Architecture {
            n_layers: usize::MAX,
            n_embd: usize::MAX,
            n_head: 1,
            n_head_kv: 1,
            ..a
        };
        assert_eq!(huge.check(), Ok(()));
        assert_eq!(huge.cache_values_per_position(), u64::MAX);
        assert_eq!(a.check(), Ok(()));
        let odd_rope = Architecture { rope_dim: 63, ..a };
        assert!(odd_rope.check().is_err());
        let no_heads = Architecture { n_head: 0, ..a };
        assert_eq!((no_heads.head_dim(), no_heads.check().is_err()), (0, true));
    }

    #[test]
    fn a_4bit_tensor_lays_out_quants_scales_and_minimums() {
        let layout = TensorEntry::layout(TensorEncoding::Int4Block32, 64, 20);
        assert_eq!(layout.quants, (0, 1024));
        assert_eq!(layout.scales, (1024, 256));
        assert_eq!(layout.mins, (1280, 256));
        assert_eq!(layout.standard, (640, 160, 160));
        assert_eq!(layout.total(), 1536);
    }
}
