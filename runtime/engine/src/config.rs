//! The shape of a Llama-family model, read from GGUF metadata.

use crate::EngineError;
use ember_gguf::{GgufError, Metadata, OptionalKey};

/// Hyper-parameters of a Llama-family decoder (SmolLM2, Llama, Qwen2 without biases).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelConfig {
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
    /// Width of one head.
    pub head_dim: usize,
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
}

impl ModelConfig {
    /// Numbers of KV cache one context position takes: keys and values of every layer.
    pub fn cache_values_per_position(&self) -> u64 {
        (self.n_layers * 2 * self.n_head_kv * self.head_dim) as u64
    }

    /// Reads the `llama.*` keys; refuses other architectures and inconsistent shapes.
    pub fn from_gguf(metadata: &Metadata) -> Result<Self, EngineError> {
        let arch = metadata.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(EngineError::UnsupportedArchitecture(arch.into()));
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
        let config = ModelConfig {
            n_layers: get("block_count")?,
            n_embd,
            n_ff: get("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            rope_dim,
            rope_base,
            rms_eps: metadata.get_f32("llama.attention.layer_norm_rms_epsilon")?,
            context_length: get("context_length")?,
            vocab_size,
        };
        config.check()?;
        Ok(config)
    }

    pub(crate) fn check(&self) -> Result<(), EngineError> {
        let bad = |why: &str| Err(EngineError::BadConfig(why.into()));
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
        if !self.n_embd.is_multiple_of(self.n_head) || !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad("heads do not divide the width, or KV heads do not divide heads");
        }
        if self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            return bad("RoPE dimension must be even and at most the head width");
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0 && self.rms_eps >= 0.0) {
            return bad("RoPE base or RMSNorm epsilon out of range");
        }
        Ok(())
    }

    /// Width of the keys (and values) of one position: `n_head_kv × head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}
