//! Opens a model file with the engine that runs it: Ember images through tract with int8
//! weights read in place, GGUF files through the f32 reference.

use anyhow::{Context, Result};
use ember_core::image::Architecture;
use ember_engine::LanguageModel;
use ember_reference::{ModelFile, ReferenceModel, ReferenceSession};
use ember_tokenizer::Tokenizer;
use ember_tract::TractModel;
use std::path::Path;

/// The engine behind a loaded model.
pub enum Engine {
    /// The f32 reference (GGUF files).
    Reference(ReferenceModel),
    /// tract over the image's int8 ONNX graph.
    Tract(TractModel),
}

/// A model file, its tokenizer and its engine.
pub struct LoadedModel {
    /// The file (chat template, special tokens).
    pub file: ModelFile,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The engine that runs it.
    pub engine: Engine,
}

impl LoadedModel {
    /// Opens `path` (GGUF or Ember image) to run on `threads` threads.
    pub fn open(path: &Path, threads: usize) -> Result<Self> {
        let context = || format!("cannot load model {}", path.display());
        let file = ModelFile::open(path).with_context(context)?;
        let tokenizer = file.tokenizer().with_context(context)?;
        let engine = match &file {
            ModelFile::Image(image) => {
                Engine::Tract(TractModel::load(image, threads).with_context(context)?)
            }
            ModelFile::Gguf(_) => {
                Engine::Reference(ReferenceModel::load(file.weights()).with_context(context)?)
            }
        };
        // Loading frees many short-lived buffers (the decoded graph, tract's optimizer passes).
        ember_engine::memory::release_free_heap();
        Ok(LoadedModel {
            file,
            tokenizer,
            engine,
        })
    }

    /// The model's shape.
    pub fn architecture(&self) -> &Architecture {
        match &self.engine {
            Engine::Reference(model) => model.architecture(),
            Engine::Tract(model) => model.architecture(),
        }
    }

    /// A new conversation whose cache holds `capacity` positions (at most the model's context).
    pub fn session(&self, capacity: usize) -> Result<Box<dyn LanguageModel + '_>> {
        let capacity = capacity.min(self.architecture().context_length);
        Ok(match &self.engine {
            Engine::Reference(model) => Box::new(ReferenceSession::new(model, capacity)),
            Engine::Tract(model) => Box::new(model.session(capacity)?),
        })
    }

    /// Which engine runs, for reports.
    pub fn engine_name(&self) -> String {
        match &self.engine {
            Engine::Reference(_) => "ember f32 reference".into(),
            Engine::Tract(model) => {
                let scheme = match &self.file {
                    ModelFile::Image(image) => image.manifest().quantization.as_str(),
                    ModelFile::Gguf(_) => "int8",
                };
                format!("ember {scheme} (tract, {} kernel)", model.kernel().name())
            }
        }
    }
}
