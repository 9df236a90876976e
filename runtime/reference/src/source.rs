//! Where a model's weights and tokenizer come from: a GGUF file or an Ember image.

use crate::{ModelError, gguf};
use ember_core::image::Architecture;
use ember_gguf::GgufFile;
use ember_image::Image;
use ember_tokenizer::Tokenizer;
use std::path::Path;

/// Something that holds a Llama-family model's weights.
pub trait WeightSource {
    /// The model's shape, checked.
    fn architecture(&self) -> Result<Architecture, ModelError>;
    /// Dimensions of the tensor `name` (fastest first), if present.
    fn dims(&self, name: &str) -> Option<Vec<u64>>;
    /// Values of the tensor `name`, in `f32`, row after row.
    fn values(&self, name: &str) -> Result<Vec<f32>, ModelError>;
}

impl WeightSource for GgufFile {
    fn architecture(&self) -> Result<Architecture, ModelError> {
        gguf::architecture(self.metadata())
    }

    fn dims(&self, name: &str) -> Option<Vec<u64>> {
        self.tensor(name).ok().map(|t| t.dims.clone())
    }

    /// Query and key rows in rotate-half order come out in Ember's adjacent-pair order
    /// ([`gguf::rope_row_order`]).
    fn values(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let info = self.tensor(name)?;
        let data = gguf::in_rope_order(&self.architecture()?, info, self.tensor_data(info))?;
        Ok(ember_gguf::dequantize(info, &data)?)
    }
}

impl WeightSource for Image {
    fn architecture(&self) -> Result<Architecture, ModelError> {
        let architecture = self.manifest().architecture;
        architecture.check()?;
        Ok(architecture)
    }

    fn dims(&self, name: &str) -> Option<Vec<u64>> {
        self.manifest().tensor(name).map(|t| t.dims.clone())
    }

    fn values(&self, name: &str) -> Result<Vec<f32>, ModelError> {
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
    pub fn open(path: &Path) -> Result<Self, ModelError> {
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
    pub fn tokenizer(&self) -> Result<Tokenizer, ModelError> {
        Ok(match self {
            ModelFile::Gguf(file) => gguf::tokenizer(file.metadata())?,
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
