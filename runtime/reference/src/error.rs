use ember_core::image::ArchitectureError;
use ember_gguf::GgufError;
use ember_tokenizer::TokenizerError;

/// Why a model file could not be opened or its weights read.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The GGUF file is unreadable or malformed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The Ember image is unreadable or malformed.
    #[error(transparent)]
    Image(#[from] ember_image::ImageFileError),
    /// The tokenizer could not be built.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The model's architecture is not one Ember runs.
    #[error(
        "unsupported architecture {0:?} (Ember runs \"llama\", \"qwen2\", \"qwen3\" and \"gemma3\")"
    )]
    UnsupportedArchitecture(String),
    /// The architecture is one Ember runs, with a feature Ember does not implement.
    #[error("unsupported model feature: {0}")]
    Unsupported(String),
    /// The model's shape is inconsistent.
    #[error(transparent)]
    BadConfig(#[from] ArchitectureError),
    /// A weight tensor does not have the shape the architecture implies.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor.
        name: String,
        /// Shape implied by the architecture (fastest dimension first).
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<u64>,
    },
}
