//! Where a model's weights and tokenizer come from: a GGUF file or an Ember image.

use crate::EngineError;
use ember_core::image::Architecture;
use ember_gguf::{GgufError, GgufFile, Metadata, OptionalKey};
use ember_image::Image;
use ember_tokenizer::Tokenizer;
use std::path::Path;

/// Something that holds a Llama-family model's weights.
pub trait WeightSource {
    /// The model's shape, checked.
    fn architecture(&self) -> Result<Architecture, EngineError>;
    /// Dimensions of the tensor `name` (fastest first), if present.
    fn dims(&self, name: &str) -> Option<Vec<u64>>;
    /// Values of the tensor `name`, in `f32`, row after row.
    fn values(&self, name: &str) -> Result<Vec<f32>, EngineError>;
}

impl WeightSource for GgufFile {
    fn architecture(&self) -> Result<Architecture, EngineError> {
        gguf_architecture(self.metadata())
    }

    fn dims(&self, name: &str) -> Option<Vec<u64>> {
        self.tensor(name).ok().map(|t| t.dims.clone())
    }

    fn values(&self, name: &str) -> Result<Vec<f32>, EngineError> {
        Ok(self.dequantize(name)?)
    }
}

impl WeightSource for Image {
    fn architecture(&self) -> Result<Architecture, EngineError> {
        let architecture = self.manifest().architecture;
        architecture.check()?;
        Ok(architecture)
    }

    fn dims(&self, name: &str) -> Option<Vec<u64>> {
        self.manifest().tensor(name).map(|t| t.dims.clone())
    }

    fn values(&self, name: &str) -> Result<Vec<f32>, EngineError> {
        Ok(self.tensor_f32(name)?)
    }
}

/// A model file of either kind, with what is needed to chat with it.
pub enum ModelFile {
    /// A GGUF file (llama.cpp's format).
    Gguf(GgufFile),
    /// An Ember image (`ember quantize`).
    Image(Box<Image>),
}

impl ModelFile {
    /// Opens `path`, telling GGUF and Ember images apart by their magic bytes.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let mut magic = [0u8; 8];
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
            .unwrap_or(0);
        if read == 8 && magic == ember_core::image::IMAGE_MAGIC {
            Ok(ModelFile::Image(Box::new(Image::open(path)?)))
        } else {
            Ok(ModelFile::Gguf(GgufFile::open(path)?))
        }
    }

    /// The weights.
    pub fn weights(&self) -> &dyn WeightSource {
        match self {
            ModelFile::Gguf(file) => file,
            ModelFile::Image(image) => image.as_ref(),
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> Result<Tokenizer, EngineError> {
        Ok(match self {
            ModelFile::Gguf(file) => Tokenizer::from_gguf(file.metadata())?,
            ModelFile::Image(image) => {
                Tokenizer::from_image(&image.manifest().tokenizer, &image.tokenizer_data()?)?
            }
        })
    }

    /// The chat template's Jinja source, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        match self {
            ModelFile::Gguf(file) => file.metadata().get_str("tokenizer.chat_template").ok(),
            ModelFile::Image(image) => image.manifest().chat_template.as_deref(),
        }
    }

    /// Whether prompts start with the beginning-of-sequence token.
    pub fn add_bos(&self) -> bool {
        match self {
            ModelFile::Gguf(file) => file
                .metadata()
                .get_bool("tokenizer.ggml.add_bos_token")
                .unwrap_or(false),
            ModelFile::Image(image) => image.manifest().tokenizer.add_bos,
        }
    }
}

/// Reads a GGUF file's `llama.*` keys; refuses other architectures and inconsistent shapes.
pub fn gguf_architecture(metadata: &Metadata) -> Result<Architecture, EngineError> {
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
