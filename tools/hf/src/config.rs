//! `config.json`: the model's shape, as GGUF's `{arch}.*` keys.

use crate::{HfError, read_json};
use ember_gguf::{GgufWriter, Value};
use serde::Deserialize;
use serde_json::Value as Json;
use std::path::Path;

/// The fields of `config.json` Ember reads (transformers 4's and 5's spellings).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// transformers' model type: `llama`, `qwen2`, `qwen3`, `gemma3_text`.
    pub model_type: String,
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    num_hidden_layers: usize,
    rms_norm_eps: f64,
    /// The vocabulary's size (the embedding's rows).
    pub vocab_size: usize,
    max_position_embeddings: usize,
    head_dim: Option<usize>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Json>,
    /// transformers 5: `{rope_theta, rope_type}`, or one of those per attention kind (Gemma 3).
    rope_parameters: Option<Json>,
    partial_rotary_factor: Option<f64>,
    use_sliding_window: Option<bool>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    rope_local_base_freq: Option<f64>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    query_pre_attn_scalar: Option<f64>,
    /// The beginning-of-sequence token's id.
    pub bos_token_id: Option<TokenIds>,
    /// The end-of-sequence token's id (or ids).
    pub eos_token_id: Option<TokenIds>,
}

/// A token id, or several (`eos_token_id: [1, 106]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(u32),
    /// Several; the first is the model's own.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The first id.
    pub fn first(&self) -> Option<u32> {
        match self {
            TokenIds::One(id) => Some(*id),
            TokenIds::Many(ids) => ids.first().copied(),
        }
    }
}

/// The Gemma 3 layers that attend to the whole context: every sixth (llama.cpp's rule, which
/// Ember's GGUF reader follows).
const GEMMA_GLOBAL_EVERY: usize = 6;
/// The RoPE base of Gemma 3's sliding-window layers in llama.cpp (and so in Ember).
const GEMMA_LOCAL_ROPE_BASE: f64 = 10_000.0;

impl Config {
    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self, HfError> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(HfError::Missing {
                dir: dir.to_owned(),
                file: "config.json",
                why: "the model's shape",
            });
        }
        let config: Config = read_json(&path)?;
        config.check()?;
        Ok(config)
    }

    /// GGUF's name for the architecture.
    pub fn architecture(&self) -> Result<&'static str, HfError> {
        Ok(match self.model_type.as_str() {
            "llama" => "llama",
            "qwen2" => "qwen2",
            "qwen3" => "qwen3",
            "gemma3_text" => "gemma3",
            other => {
                return Err(HfError::Unsupported(format!(
                    "architecture {other:?} ({}); Ember runs llama, qwen2, qwen3 and gemma3_text",
                    self.architectures.join(", ")
                )));
            }
        })
    }

    /// Query heads.
    pub fn n_head(&self) -> usize {
        self.num_attention_heads
    }

    /// Key and value heads.
    pub fn n_head_kv(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of each head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or_else(|| self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Width of the residual stream.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Width of the feed-forward block.
    pub fn ff_size(&self) -> usize {
        self.intermediate_size
    }

    /// Layers.
    pub fn n_layers(&self) -> usize {
        self.num_hidden_layers
    }

    /// The RoPE parameters of `kind` (`full_attention`, `sliding_attention`) when transformers 5
    /// keys them by attention kind, else the only ones.
    fn rope_parameters(&self, kind: &str) -> Option<&Json> {
        let parameters = self.rope_parameters.as_ref()?;
        Some(parameters.get(kind).unwrap_or(parameters))
    }

    /// The RoPE base of the global layers.
    fn rope_base(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters("full_attention")?["rope_theta"].as_f64())
            .unwrap_or(10_000.0)
    }

    /// Refuses what Ember does not run.
    fn check(&self) -> Result<(), HfError> {
        let arch = self.architecture()?;
        let unsupported = |what: String| Err(HfError::Unsupported(what));
        if self.num_attention_heads == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return unsupported("a model without heads, width or layers".into());
        }
        let mut rope_types = Vec::new();
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            rope_types.push(scaling.get("rope_type").or(scaling.get("type")).cloned());
        }
        for kind in ["full_attention", "sliding_attention"] {
            if let Some(parameters) = self.rope_parameters(kind) {
                rope_types.push(parameters.get("rope_type").cloned());
            }
        }
        for rope_type in rope_types.into_iter().flatten() {
            if rope_type != "default" {
                return unsupported(format!("RoPE scaling {rope_type}"));
            }
        }
        if self.partial_rotary_factor.is_some_and(|f| f != 1.0) {
            return unsupported("RoPE over part of each head (partial_rotary_factor)".into());
        }
        if self.use_sliding_window == Some(true) && arch != "gemma3" {
            return unsupported("sliding-window attention in a Qwen model".into());
        }
        if arch == "gemma3" {
            if let Some(types) = &self.layer_types {
                let expected = |layer: usize| match (layer + 1) % GEMMA_GLOBAL_EVERY {
                    0 => "full_attention",
                    _ => "sliding_attention",
                };
                if types.len() != self.num_hidden_layers
                    || types.iter().enumerate().any(|(i, t)| t != expected(i))
                {
                    return unsupported(format!(
                        "Gemma 3 layer types other than every {GEMMA_GLOBAL_EVERY}th global: {types:?}"
                    ));
                }
            }
            let local = self.rope_local_base_freq.or_else(|| {
                self.rope_parameters
                    .as_ref()?
                    .get("sliding_attention")?
                    .get("rope_theta")?
                    .as_f64()
            });
            if local.is_some_and(|base| base != GEMMA_LOCAL_ROPE_BASE) {
                return unsupported(format!(
                    "a sliding-window RoPE base of {} (Ember's Gemma 3 uses {GEMMA_LOCAL_ROPE_BASE})",
                    local.unwrap_or_default()
                ));
            }
            if let Some(scalar) = self.query_pre_attn_scalar
                && scalar != self.head_dim() as f64
            {
                return unsupported(format!(
                    "queries scaled by 1/√{scalar} instead of 1/√head_dim ({})",
                    self.head_dim()
                ));
            }
            if self.attn_logit_softcapping.is_some() {
                return unsupported("attention logit soft-capping".into());
            }
        }
        Ok(())
    }

    /// Writes `general.architecture` and the `{arch}.*` keys.
    pub fn write_metadata(&self, gguf: &mut GgufWriter) -> Result<(), HfError> {
        let arch = self.architecture()?;
        let key = |name: &str| format!("{arch}.{name}");
        let u = |v: usize| Value::U32(v as u32);
        gguf.add_metadata("general.architecture", Value::String(arch.into()))?
            .add_metadata(&key("block_count"), u(self.num_hidden_layers))?
            .add_metadata(&key("context_length"), u(self.max_position_embeddings))?
            .add_metadata(&key("embedding_length"), u(self.hidden_size))?
            .add_metadata(&key("feed_forward_length"), u(self.intermediate_size))?
            .add_metadata(&key("attention.head_count"), u(self.num_attention_heads))?
            .add_metadata(&key("attention.head_count_kv"), u(self.n_head_kv()))?
            .add_metadata(&key("rope.freq_base"), Value::F32(self.rope_base() as f32))?
            .add_metadata(
                &key("attention.layer_norm_rms_epsilon"),
                Value::F32(self.rms_norm_eps as f32),
            )?
            .add_metadata(&key("vocab_size"), u(self.vocab_size))?;
        if let Some(head_dim) = self.head_dim {
            gguf.add_metadata(&key("attention.key_length"), u(head_dim))?
                .add_metadata(&key("attention.value_length"), u(head_dim))?;
        }
        if arch == "gemma3" {
            if let Some(window) = self.sliding_window {
                gguf.add_metadata(&key("attention.sliding_window"), u(window))?;
            }
            if let Some(cap) = self.final_logit_softcapping {
                gguf.add_metadata(&key("final_logit_softcapping"), Value::F32(cap as f32))?;
            }
        }
        Ok(())
    }
}
