//! What a GGUF file's metadata says about its model: the architecture (`llama.*` keys) and
//! the tokenizer (`tokenizer.ggml.*` keys).

use crate::ModelError;
use ember_core::image::{Architecture, Family, Variant};
use ember_gguf::{GgufError, Metadata, OptionalKey, TensorInfo};
use ember_tokenizer::{Tokenizer, Vocabulary};
use std::borrow::Cow;

/// Reads the architecture's keys (`llama.*`, `qwen2.*`, `qwen3.*` or `gemma3.*`); refuses other
/// architectures, RoPE scaling and inconsistent shapes.
pub fn architecture(metadata: &Metadata) -> Result<Architecture, ModelError> {
    let arch = metadata.get_str("general.architecture")?;
    let family =
        Family::from_name(arch).ok_or_else(|| ModelError::UnsupportedArchitecture(arch.into()))?;
    let key = |name: &str| format!("{arch}.{name}");
    let get = |name: &str| -> Result<usize, GgufError> {
        metadata.get_u32(&key(name)).map(|v| v as usize)
    };
    let float = |name: &str| metadata.get_f32(&key(name)).optional();
    let n_embd = get("embedding_length")?;
    let n_head = get("attention.head_count")?;
    let n_head_kv = get("attention.head_count_kv").optional()?.unwrap_or(n_head);
    let key_length = get("attention.key_length").optional()?;
    if let Some(value_length) = get("attention.value_length").optional()?
        && Some(value_length) != key_length
    {
        return Err(ModelError::Unsupported(format!(
            "values of {value_length} per head and keys of {key_length:?}"
        )));
    }
    let head_dim = key_length.unwrap_or_else(|| n_embd.checked_div(n_head).unwrap_or(0));
    if let Ok(scaling) = metadata.get_str(&key("rope.scaling.type"))
        && scaling != "none"
    {
        return Err(ModelError::Unsupported(format!("RoPE scaling {scaling:?}")));
    }
    let vocab_size = match get("vocab_size").optional()? {
        Some(size) => size,
        None => metadata.get_str_array("tokenizer.ggml.tokens")?.len(),
    };
    let mut variant = Variant {
        family,
        // Recorded only where it differs from the width's share, so a Llama stays a Llama.
        head_dim: if Some(head_dim) == n_embd.checked_div(n_head) {
            0
        } else {
            head_dim
        },
        ..Variant::default()
    };
    if family == Family::Gemma3 {
        // llama.cpp's Gemma 3: every sixth layer global, the others within the window, with
        // RoPE base 10,000 (neither is in the file).
        variant.sliding_window = get("attention.sliding_window").optional()?.unwrap_or(0);
        variant.global_every = 6;
        variant.local_rope_base = 10_000.0;
        variant.logit_softcap = float("final_logit_softcapping")?.unwrap_or(0.0);
    }
    let architecture = Architecture {
        n_layers: get("block_count")?,
        n_embd,
        n_ff: get("feed_forward_length")?,
        n_head,
        n_head_kv,
        rope_dim: get("rope.dimension_count").optional()?.unwrap_or(head_dim),
        rope_base: float("rope.freq_base")?.unwrap_or(10_000.0),
        rms_eps: metadata.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
        context_length: get("context_length")?,
        vocab_size,
        variant,
    };
    architecture.check()?;
    Ok(architecture)
}

/// Whether the family's GGUF files (like Hugging Face's weights) hold each query and key head
/// in rotate-half order, RoPE turning dimensions `i` and `i + d/2` together (llama.cpp's NeoX
/// RoPE). Llama's converter reorders them to adjacent pairs, which is what Ember rotates.
pub fn rotates_halves(family: Family) -> bool {
    family != Family::Llama
}

/// Where each row of the query or key tensor `name` must come from for Ember's adjacent-pair
/// RoPE, when the file holds it in rotate-half order: `order[j]` is the file's row that becomes
/// row `j`. `None` for every other tensor and for files already in Ember's order. The
/// projections' weights and biases and the per-head norms' weights all have rows per head
/// dimension (the norms one head's worth).
pub fn rope_row_order(architecture: &Architecture, name: &str) -> Option<Vec<usize>> {
    const ROTATED: [&str; 6] = [
        "attn_q.weight",
        "attn_k.weight",
        "attn_q.bias",
        "attn_k.bias",
        "attn_q_norm.weight",
        "attn_k_norm.weight",
    ];
    let part = name.strip_prefix("blk.")?.split_once('.')?.1;
    if !rotates_halves(architecture.family()) || !ROTATED.contains(&part) {
        return None;
    }
    let (head_dim, half) = (architecture.head_dim(), architecture.rope_dim / 2);
    let rows = if part.contains("norm") {
        head_dim
    } else if part.starts_with("attn_q") {
        architecture.q_dim()
    } else {
        architecture.kv_dim()
    };
    Some(
        (0..rows)
            .map(|row| {
                let (head, j) = (row / head_dim, row % head_dim);
                // Pair i of the head is rows (2i, 2i + 1) here, (i, i + half) in the file.
                let from = if j < 2 * half {
                    j % 2 * half + j / 2
                } else {
                    j
                };
                head * head_dim + from
            })
            .collect(),
    )
}

/// The bytes of tensor `info` (`data`, as stored in the file) with its rows in Ember's RoPE
/// order ([`rope_row_order`]): the rows are whole blocks of any type, so they move as bytes.
pub fn in_rope_order<'a>(
    architecture: &Architecture,
    info: &TensorInfo,
    data: &'a [u8],
) -> Result<Cow<'a, [u8]>, ModelError> {
    let Some(order) = rope_row_order(architecture, &info.name) else {
        return Ok(Cow::Borrowed(data));
    };
    let (block, block_bytes) = info.ty.block_layout();
    let row_values = if info.dims.len() == 1 {
        1
    } else {
        info.dims[0]
    };
    let rows = info.element_count() / row_values.max(1);
    if !row_values.is_multiple_of(block) || rows != order.len() as u64 {
        return Err(ModelError::TensorShape {
            name: info.name.clone(),
            expected: vec![order.len()],
            found: info.dims.clone(),
        });
    }
    let row_bytes = (row_values / block * block_bytes) as usize;
    Ok(Cow::Owned(
        order
            .iter()
            .flat_map(|&row| &data[row * row_bytes..][..row_bytes])
            .copied()
            .collect(),
    ))
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
        // SentencePiece vocabularies have scores instead of merges.
        merges: metadata
            .get_str_array("tokenizer.ggml.merges")
            .optional()?
            .unwrap_or_default(),
        scores: metadata
            .get_f32_array("tokenizer.ggml.scores")
            .optional()?
            .unwrap_or_default(),
        // llama.cpp's default for SentencePiece (and meaningless for byte-level BPE).
        add_space_prefix: metadata
            .get_bool("tokenizer.ggml.add_space_prefix")
            .optional()?
            .unwrap_or(true),
        bos: metadata.get_u32("tokenizer.ggml.bos_token_id").optional()?,
        eos: metadata.get_u32("tokenizer.ggml.eos_token_id").optional()?,
    })
}

/// Builds the tokenizer described by the `tokenizer.ggml.*` keys.
pub fn tokenizer(metadata: &Metadata) -> Result<Tokenizer, ModelError> {
    Ok(Tokenizer::from_vocabulary(vocabulary(metadata)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotate-half RoPE (NeoX): dimension i turns with i + d/2.
    fn rotate_halves(head: &mut [f32], angles: &[f32]) {
        let half = head.len() / 2;
        for (i, &angle) in angles.iter().enumerate() {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * angle.cos() - b * angle.sin();
            head[i + half] = a * angle.sin() + b * angle.cos();
        }
    }

    /// Adjacent-pair RoPE (Ember's): dimension 2i turns with 2i + 1.
    fn rotate_pairs(head: &mut [f32], angles: &[f32]) {
        for (pair, &angle) in head.chunks_exact_mut(2).zip(angles) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * angle.cos() - b * angle.sin();
            pair[1] = a * angle.sin() + b * angle.cos();
        }
    }

    fn architecture(family: Family) -> Architecture {
        Architecture {
            n_layers: 1,
            n_embd: 16,
            n_ff: 32,
            n_head: 2,
            n_head_kv: 1,
            rope_dim: 8,
            rope_base: 10_000.0,
            rms_eps: 1e-6,
            context_length: 8,
            vocab_size: 4,
            variant: Variant {
                family,
                ..Variant::default()
            },
        }
    }

    #[test]
    fn reordered_rows_rotated_in_pairs_are_the_file_rows_rotated_in_halves() {
        let qwen = architecture(Family::Qwen2);
        let order = rope_row_order(&qwen, "blk.0.attn_q.weight").unwrap();
        assert_eq!(order[..8], [0, 4, 1, 5, 2, 6, 3, 7]);
        assert_eq!(order[8..], [8, 12, 9, 13, 10, 14, 11, 15]);
        assert_eq!(rope_row_order(&qwen, "blk.0.attn_k.bias").unwrap().len(), 8);
        assert_eq!(
            rope_row_order(&qwen, "blk.3.attn_q_norm.weight")
                .unwrap()
                .len(),
            8
        );
        assert!(rope_row_order(&qwen, "blk.0.attn_v.weight").is_none());
        assert!(rope_row_order(&architecture(Family::Llama), "blk.0.attn_q.weight").is_none());
        // A query head as the file has it, rotated its way, is the reordered head rotated
        // Ember's way, reordered.
        let head: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 - 1.0).collect();
        let angles = [0.3, 1.1, -0.7, 2.0];
        let mut theirs = head.clone();
        rotate_halves(&mut theirs, &angles);
        let mut ours: Vec<f32> = order[..8].iter().map(|&i| head[i]).collect();
        rotate_pairs(&mut ours, &angles);
        let theirs_reordered: Vec<f32> = order[..8].iter().map(|&i| theirs[i]).collect();
        assert_eq!(ours, theirs_reordered);
    }
}
