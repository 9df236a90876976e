//! The safetensors shards: every tensor under its GGUF name, in GGUF's layout.

use crate::{Config, HfError, read_json};
use ember_gguf::{GgufWriter, TensorType};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One file of the weights: `model.safetensors` alone, or a shard.
const SINGLE: &str = "model.safetensors";
/// The index of a sharded model.
const INDEX: &str = "model.safetensors.index.json";

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// A shard, mapped.
struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl Shard {
    fn open(path: PathBuf) -> Result<Self, HfError> {
        let io = |source| HfError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        // SAFETY: read-only mapping that lives as long as the shard; model files are not
        // modified while Ember reads them.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(Shard { path, map })
    }

    fn tensors(&self) -> Result<SafeTensors<'_>, HfError> {
        SafeTensors::deserialize(&self.map).map_err(|e| HfError::Safetensors {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }
}

/// Buffers transformers keeps in some checkpoints that are not weights.
fn is_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// GGUF's name of the tensor Hugging Face calls `name` in `arch`.
fn gguf_name(arch: &str, name: &str) -> Option<String> {
    match name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let gemma = arch == "gemma3";
    let kind = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" if gemma => "ffn_norm",
        "post_feedforward_layernorm" if gemma => "post_ffw_norm",
        _ => return None,
    };
    matches!(suffix, "weight" | "bias").then(|| format!("blk.{layer}.{kind}.{suffix}"))
}

/// The layer of a GGUF tensor name (`blk.N.…`).
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

/// Opens the shards and checks them against the index: every tensor in exactly the shard the
/// index names. Returns the shards and, for each tensor, its shard.
fn open_shards(dir: &Path) -> Result<(Vec<Shard>, BTreeMap<String, usize>), HfError> {
    let index_path = dir.join(INDEX);
    if !index_path.is_file() {
        let path = dir.join(SINGLE);
        if !path.is_file() {
            return Err(HfError::Missing {
                dir: dir.to_owned(),
                file: "model.safetensors",
                why: "the weights, or model.safetensors.index.json and its shards",
            });
        }
        let shard = Shard::open(path)?;
        let names = shard
            .tensors()?
            .names()
            .into_iter()
            .map(|n| (n.to_string(), 0))
            .collect();
        return Ok((vec![shard], names));
    }
    let index: Index = read_json(&index_path)?;
    let files: Vec<&String> = {
        let mut files: Vec<&String> = index.weight_map.values().collect();
        files.sort();
        files.dedup();
        files
    };
    let mut shards = Vec::new();
    let mut found: BTreeMap<String, usize> = BTreeMap::new();
    for (number, file) in files.iter().enumerate() {
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(HfError::Shards(format!(
                "the shard name {file:?} is not a file beside the index"
            )));
        }
        let path = dir.join(file);
        if !path.is_file() {
            return Err(HfError::Shards(format!("the shard {file} is missing")));
        }
        let shard = Shard::open(path)?;
        for name in shard.tensors()?.names() {
            if let Some(other) = found.insert(name.to_string(), number) {
                return Err(HfError::Shards(format!(
                    "{name} is in both {} and {file}",
                    files[other]
                )));
            }
        }
        shards.push(shard);
    }
    for (name, &number) in &found {
        match index.weight_map.get(name) {
            None => {
                return Err(HfError::Shards(format!(
                    "{name} is in {} but not in the index",
                    files[number]
                )));
            }
            Some(listed) if listed != files[number] => {
                return Err(HfError::Shards(format!(
                    "{name} is in {} but the index puts it in {listed}",
                    files[number]
                )));
            }
            Some(_) => {}
        }
    }
    if let Some((name, file)) = index
        .weight_map
        .iter()
        .find(|(name, _)| !found.contains_key(*name))
    {
        return Err(HfError::Shards(format!(
            "the index puts {name} in {file}, which does not hold it"
        )));
    }
    Ok((shards, found))
}

/// Where each row of a Llama query or key matrix goes in GGUF: llama.cpp's converter turns each
/// head's rotate-half rows (`i`, `i + d/2`) into adjacent pairs (`2i`, `2i + 1`).
fn adjacent_pair_order(rows: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..rows)
        .map(|row| {
            let (head, j) = (row / head_dim, row % head_dim);
            head * head_dim + (j % 2) * half + j / 2
        })
        .collect()
}

/// Writes every tensor of `dir`'s shards into `gguf`, calling `progress(done, all)`.
pub fn write_tensors(
    dir: &Path,
    config: &Config,
    gguf: &mut GgufWriter,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), HfError> {
    let arch = config.architecture()?;
    let (shards, names) = open_shards(dir)?;
    let views: Vec<SafeTensors<'_>> = shards
        .iter()
        .map(Shard::tensors)
        .collect::<Result<_, _>>()?;
    let all = names.len();
    for (done, (name, &shard)) in names.iter().enumerate() {
        progress(done, all);
        if is_buffer(name) {
            continue;
        }
        let Some(target) = gguf_name(arch, name) else {
            return Err(HfError::Unsupported(format!(
                "the tensor {name}, which {arch} models do not have"
            )));
        };
        if let Some(layer) = layer_of(&target)
            && layer >= config.n_layers()
        {
            return Err(HfError::Tensor {
                name: name.clone(),
                detail: format!("config.json has {} layers", config.n_layers()),
            });
        }
        let view = views[shard]
            .tensor(name)
            .map_err(|e| HfError::Safetensors {
                path: shards[shard].path.clone(),
                detail: e.to_string(),
            })?;
        let bad = |detail: String| HfError::Tensor {
            name: name.clone(),
            detail,
        };
        let ty = match view.dtype() {
            Dtype::F32 => TensorType::F32,
            Dtype::F16 => TensorType::F16,
            Dtype::BF16 => TensorType::BF16,
            other => {
                return Err(bad(format!(
                    "stored as {other:?}; Ember reads F32, F16 and BF16 safetensors"
                )));
            }
        };
        let shape = view.shape();
        if shape.is_empty() || shape.len() > 2 {
            return Err(bad(format!(
                "shape {shape:?} (Ember's tensors have 1 or 2 dimensions)"
            )));
        }
        if let Some(expected) = expected_shape(config, &target)
            && shape != expected
        {
            return Err(bad(format!(
                "shape {shape:?}, but config.json makes it {expected:?}"
            )));
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let mut data = view.data().to_vec();
        let rotated = target.ends_with("attn_q.weight")
            || target.ends_with("attn_k.weight")
            || target.ends_with("attn_q.bias")
            || target.ends_with("attn_k.bias");
        if arch == "llama" && rotated {
            let rows = shape[0];
            let head_dim = config.head_dim();
            if head_dim == 0 || !rows.is_multiple_of(head_dim) || !head_dim.is_multiple_of(2) {
                return Err(bad(format!(
                    "{rows} rows are not whole heads of {head_dim}"
                )));
            }
            let row_bytes = data.len() / rows;
            let mut permuted = Vec::with_capacity(data.len());
            for from in adjacent_pair_order(rows, head_dim) {
                permuted.extend_from_slice(&data[from * row_bytes..(from + 1) * row_bytes]);
            }
            data = permuted;
        }
        let (ty, data) = if arch == "gemma3" && target.ends_with("norm.weight") {
            // Gemma scales by 1 + w; llama.cpp's GGUF stores 1 + w.
            let values = to_f32(ty, &data);
            let shifted: Vec<u8> = values
                .iter()
                .flat_map(|v| (v + 1.0).to_le_bytes())
                .collect();
            (TensorType::F32, shifted)
        } else {
            (ty, data)
        };
        gguf.add_tensor(&target, &dims, ty, data)?;
    }
    progress(all, all);
    Ok(())
}

/// The shape (Hugging Face's order, rows first) config.json gives the tensor GGUF calls `name`.
fn expected_shape(config: &Config, name: &str) -> Option<Vec<usize>> {
    let (width, ff, vocab) = (config.hidden_size(), config.ff_size(), config.vocab_size);
    let q = config.n_head() * config.head_dim();
    let kv = config.n_head_kv() * config.head_dim();
    let part = match name.strip_prefix("blk.") {
        Some(rest) => rest.split_once('.')?.1,
        None => name,
    };
    Some(match part {
        "token_embd.weight" | "output.weight" => vec![vocab, width],
        "output_norm.weight"
        | "attn_norm.weight"
        | "ffn_norm.weight"
        | "post_attention_norm.weight"
        | "post_ffw_norm.weight" => vec![width],
        "attn_q.weight" => vec![q, width],
        "attn_k.weight" | "attn_v.weight" => vec![kv, width],
        "attn_q.bias" => vec![q],
        "attn_k.bias" | "attn_v.bias" => vec![kv],
        "attn_output.weight" => vec![width, q],
        "attn_q_norm.weight" | "attn_k_norm.weight" => vec![config.head_dim()],
        "ffn_gate.weight" | "ffn_up.weight" => vec![ff, width],
        "ffn_down.weight" => vec![width, ff],
        _ => return None,
    })
}

/// Values of little-endian F32, F16 or BF16 bytes.
fn to_f32(ty: TensorType, data: &[u8]) -> Vec<f32> {
    match ty {
        TensorType::F16 => data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        TensorType::BF16 => data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_half_rows_become_adjacent_pairs() {
        // One head of 8: pairs (0, 4), (1, 5), (2, 6), (3, 7) become rows 0–7 in order.
        assert_eq!(adjacent_pair_order(8, 8), [0, 4, 1, 5, 2, 6, 3, 7]);
        // Two heads: the second head's rows move within the head.
        assert_eq!(adjacent_pair_order(8, 4), [0, 2, 1, 3, 4, 6, 5, 7]);
    }

    #[test]
    fn names_map_as_llama_cpp_maps_them() {
        let name = |arch, hf| gguf_name(arch, hf);
        assert_eq!(
            name("llama", "model.layers.3.self_attn.q_proj.weight").as_deref(),
            Some("blk.3.attn_q.weight")
        );
        assert_eq!(
            name("llama", "model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(
            name("gemma3", "model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.post_attention_norm.weight")
        );
        assert_eq!(
            name("gemma3", "model.layers.0.pre_feedforward_layernorm.weight").as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(
            name("llama", "model.layers.0.pre_feedforward_layernorm.weight"),
            None
        );
        assert_eq!(name("llama", "model.vision_tower.weight"), None);
    }
}
