//! Hugging Face model directories as GGUF: `config.json`, `model.safetensors` (or
//! `model.safetensors.index.json` and its shards), `tokenizer.json` and `tokenizer_config.json`
//! become the metadata and tensors llama.cpp's `convert_hf_to_gguf.py` would write, so the rest
//! of Ember (the f32 reference, `ember quantize`) reads one format.
//!
//! What the conversion does, as llama.cpp's converter does it:
//! - tensor names: `model.layers.N.self_attn.q_proj.weight` → `blk.N.attn_q.weight` …;
//! - Llama's query and key rows go from Hugging Face's rotate-half order to adjacent pairs
//!   (Qwen and Gemma GGUFs keep rotate-half; Ember reorders those when it reads them);
//! - Gemma's RMSNorm weights `w` become `1 + w` (its norms scale by `1 + w`);
//! - F32, F16 and BF16 tensors keep their type; dimensions are written fastest first.
//!
//! Every file is checked: shards against their index (a tensor in no shard, in two, or in
//! another shard than the index says), shapes against the config, the tokenizer's kind.

#![warn(missing_docs)]

mod config;
mod tokenizer;
mod weights;

use ember_gguf::{GgufError, GgufWriter, Value};
use std::path::{Path, PathBuf};

pub use config::Config;

/// Why a directory could not be read as a model.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// A file the model needs is not in the directory.
    #[error("{dir}: no {file} ({why})")]
    Missing {
        /// The directory.
        dir: PathBuf,
        /// The missing file.
        file: &'static str,
        /// What it holds.
        why: &'static str,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON file is malformed or lacks a field.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A safetensors file is malformed.
    #[error("{path}: not a valid safetensors file: {detail}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The shards and their index disagree.
    #[error("the shards disagree with model.safetensors.index.json: {0}")]
    Shards(String),
    /// Something the model uses that Ember does not run.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A tensor's shape or type is not what the config says.
    #[error("tensor {name}: {detail}")]
    Tensor {
        /// The tensor (Hugging Face's name).
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// The GGUF form could not be built.
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// Reads the model in `dir` into a GGUF file in memory (see the crate's documentation).
/// `progress` is called with (tensors done, tensors in all).
pub fn to_gguf(dir: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<GgufWriter, HfError> {
    let config = Config::read(dir)?;
    let mut gguf = GgufWriter::new();
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    gguf.add_metadata("general.name", Value::String(name))?;
    config.write_metadata(&mut gguf)?;
    tokenizer::write_metadata(dir, &config, &mut gguf)?;
    weights::write_tensors(dir, &config, &mut gguf, progress)?;
    Ok(gguf)
}

/// Reads a JSON file into `T`.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, HfError> {
    let text = std::fs::read_to_string(path).map_err(|source| HfError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| HfError::Json {
        path: path.to_owned(),
        source,
    })
}
