use ember_core::image::ArchitectureError;
use ember_core::sampler::SamplingError;
use ember_tokenizer::TokenizerError;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The Ember image is unreadable or malformed.
    #[error(transparent)]
    Image(#[from] ember_image::ImageFileError),
    /// The tokenizer could not be built or refused the text.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The model's chat template does not parse or refuses the conversation.
    #[error(transparent)]
    Template(#[from] ember_template::TemplateError),
    /// The model's shape is inconsistent.
    #[error(transparent)]
    BadConfig(#[from] ArchitectureError),
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The KV cache has no room for another position.
    #[error("the context is full ({capacity} tokens)")]
    ContextFull {
        /// Positions the cache holds.
        capacity: usize,
    },
    /// The prompt alone does not fit in the context.
    #[error("the prompt has {prompt} tokens but the context holds {context}")]
    PromptTooLong {
        /// Prompt length in tokens.
        prompt: usize,
        /// Context length in tokens.
        context: usize,
    },
    /// The prompt is empty.
    #[error("the prompt is empty: give the model at least one token")]
    EmptyPrompt,
    /// The inference engine (tract) could not load or run the model.
    #[error("engine: {0}")]
    Backend(String),
    /// A sampling setting is out of range.
    #[error("sampling: {0}")]
    Sampling(#[from] SamplingError),
}
