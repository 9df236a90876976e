//! What a GGUF file's metadata says about its model: the architecture (`llama.*` keys) and
//! the tokenizer (`tokenizer.ggml.*` keys).

use crate::ModelError;
use ember_core::image::Architecture;
use ember_gguf::{GgufError, Metadata, OptionalKey};
use ember_tokenizer::{Tokenizer, Vocabulary};

/// Reads the `llama.*` keys; refuses other architectures and inconsistent shapes.
pub fn architecture(metadata: &Metadata) -> Result<Architecture, ModelError> {
    let arch = metadata.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(ModelError::UnsupportedArchitecture(arch.into()));
    }
    let get = |key: &str| -> Result<usize, GgufError> {
        metadata
            .get_u32(&format!("llama.{key}"))
            .map(|v| v as usize)
    };
    let n_embd = get("embedding_length")?;
    let n_head = get("attention.head_count")?;
    let n_head_kv = get("attention.head_count_kv").optional()?.unwrap_or(n_head);
    let head_dim = n_embd.checked_div(n_head).unwrap_or(0);
    let rope_dim = get("rope.dimension_count").optional()?.unwrap_or(head_dim);
    let rope_base = metadata
        .get_f32("llama.rope.freq_base")
        .optional()?
        .unwrap_or(10_000.0);
    let vocab_size = match get("vocab_size").optional()? {
        Some(size) => size,
        None => metadata.get_str_array("tokenizer.ggml.tokens")?.len(),
    };
    let architecture = Architecture {
        n_layers: get("block_count")?,
        n_embd,
        n_ff: get("feed_forward_length")?,
        n_head,
        n_head_kv,
        rope_dim,
        rope_base,
        rms_eps: metadata.get_f32("llama.attention.layer_norm_rms_epsilon")?,
        context_length: get("context_length")?,
        vocab_size,
    };
    architecture.check()?;
    Ok(architecture)
}

/// Reads the `tokenizer.ggml.*` keys. Absent optional keys take llama.cpp's defaults
/// (pre-tokenizer `default`, every token normal, no special tokens).
pub fn vocabulary(metadata: &Metadata) -> Result<Vocabulary<'_>, GgufError> {
    let tokens = metadata.get_str_array("tokenizer.ggml.tokens")?;
    let token_types = metadata
        .get_int_array("tokenizer.ggml.token_type")
        .optional()?
        .unwrap_or_else(|| vec![1; tokens.len()]);
    Ok(Vocabulary {
        model: metadata.get_str("tokenizer.ggml.model")?,
        pre: metadata
            .get_str("tokenizer.ggml.pre")
            .optional()?
            .unwrap_or("default"),
        tokens,
        token_types,
        merges: metadata.get_str_array("tokenizer.ggml.merges")?,
        bos: metadata.get_u32("tokenizer.ggml.bos_token_id").optional()?,
        eos: metadata.get_u32("tokenizer.ggml.eos_token_id").optional()?,
    })
}

/// Builds the tokenizer described by the `tokenizer.ggml.*` keys.
pub fn tokenizer(metadata: &Metadata) -> Result<Tokenizer, ModelError> {
    Ok(Tokenizer::from_vocabulary(vocabulary(metadata)?)?)
}
