//! Where a model's weights and tokenizer come from: a GGUF file or an Ember image.

use crate::{EngineError, ModelConfig};
use ember_core::image::Architecture;
use ember_gguf::GgufFile;
use ember_image::Image;
use ember_tokenizer::Tokenizer;
use std::path::Path;

/// Something that holds a Llama-family model's weights.
pub trait WeightSource {
    /// The model's hyper-parameters.
    fn config(&self) -> Result<ModelConfig, EngineError>;
    /// Dimensions of the tensor `name` (fastest first), if present.
    fn dims(&self, name: &str) -> Option<Vec<u64>>;
    /// Values of the tensor `name`, in `f32`, row after row.
    fn values(&self, name: &str) -> Result<Vec<f32>, EngineError>;
}

impl WeightSource for GgufFile {
    fn config(&self) -> Result<ModelConfig, EngineError> {
        ModelConfig::from_gguf(self.metadata())
    }

    fn dims(&self, name: &str) -> Option<Vec<u64>> {
        self.tensor(name).ok().map(|t| t.dims.clone())
    }

    fn values(&self, name: &str) -> Result<Vec<f32>, EngineError> {
        Ok(self.dequantize(name)?)
    }
}

impl WeightSource for Image {
    fn config(&self) -> Result<ModelConfig, EngineError> {
        ModelConfig::from_architecture(&self.manifest().architecture)
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

impl ModelConfig {
    /// The configuration stored in an image manifest.
    pub fn from_architecture(a: &Architecture) -> Result<Self, EngineError> {
        let config = ModelConfig {
            n_layers: a.n_layers as usize,
            n_embd: a.n_embd as usize,
            n_ff: a.n_ff as usize,
            n_head: a.n_head as usize,
            n_head_kv: a.n_head_kv as usize,
            head_dim: (a.n_embd as usize)
                .checked_div(a.n_head as usize)
                .unwrap_or(0),
            rope_dim: a.rope_dim as usize,
            rope_base: a.rope_base,
            rms_eps: a.rms_eps,
            context_length: a.context_length as usize,
            vocab_size: a.vocab_size as usize,
        };
        config.check()?;
        Ok(config)
    }

    /// The configuration as an image manifest stores it.
    pub fn to_architecture(&self) -> Architecture {
        Architecture {
            n_layers: self.n_layers as u32,
            n_embd: self.n_embd as u32,
            n_ff: self.n_ff as u32,
            n_head: self.n_head as u32,
            n_head_kv: self.n_head_kv as u32,
            rope_dim: self.rope_dim as u32,
            rope_base: self.rope_base,
            rms_eps: self.rms_eps,
            context_length: self.context_length as u32,
            vocab_size: self.vocab_size as u32,
        }
    }
}
