//! The generation loop shared by every engine: prefill the prompt, then sample one token at a
//! time, streaming whole characters, until end-of-sequence or a token limit.

use crate::{EngineError, memory};
use ember_core::sampler::{Sampler, SamplingConfig};
use ember_tokenizer::Tokenizer;
use serde::Serialize;
use std::ops::ControlFlow;
use std::time::Instant;

/// A model with a KV cache that can be fed tokens.
pub trait LanguageModel {
    /// Most positions the cache can hold.
    fn context_length(&self) -> usize;
    /// Positions already in the cache.
    fn position(&self) -> usize;
    /// Runs `tokens` (one batch, appended to the cache) and returns the logits after the last.
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError>;
    /// Empties the cache.
    fn reset(&mut self);

    /// Runs `tokens` one at a time and returns the logits after each of them (teacher-forced
    /// evaluation).
    fn logits_at_each(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        tokens.iter().map(|&t| self.feed(&[t])).collect()
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// Stop after this many new tokens.
    pub max_tokens: usize,
    /// How to pick tokens.
    pub sampling: SamplingConfig,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model produced its end-of-sequence token.
    Eos,
    /// `max_tokens` was reached, or the context is full.
    Length,
    /// The caller stopped it at a stop sequence.
    Stop,
    /// The caller cancelled it.
    Cancelled,
}

/// Counts and timings of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (the end-of-sequence token not counted).
    pub generated_tokens: usize,
    /// Seconds spent loading the model (filled in by whoever loaded it).
    pub load_seconds: f64,
    /// Seconds from the start of prefill to the first sampled token.
    pub time_to_first_token_seconds: f64,
    /// Prompt tokens per second during prefill.
    pub prefill_tokens_per_second: f64,
    /// Tokens per second after the first (one forward pass each).
    pub decode_tokens_per_second: f64,
    /// Anonymous resident memory at the end, in bytes.
    pub rss_anon_bytes: u64,
    /// File-backed resident memory at the end, in bytes.
    pub rss_file_bytes: u64,
}

/// The result of [`generate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// Generated token ids (without the end-of-sequence token).
    pub tokens: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Why it stopped.
    pub finish: FinishReason,
    /// Counts and timings.
    pub stats: Stats,
}

/// Generates a continuation of `prompt` (token ids, appended to whatever `model` holds),
/// calling `on_text` with each run of whole characters as soon as it is complete.
pub fn generate(
    model: &mut dyn LanguageModel,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, EngineError> {
    generate_until(model, tokenizer, prompt, options, &mut |text| {
        on_text(text);
        ControlFlow::Continue(())
    })
}

/// [`generate`], where `on_text` may end generation early by returning the reason
/// ([`FinishReason::Stop`] or [`FinishReason::Cancelled`]). The token whose text ended it is part
/// of the generation but not fed to the model (as when the token limit ends it).
pub fn generate_until(
    model: &mut dyn LanguageModel,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<FinishReason>,
) -> Result<Generation, EngineError> {
    let context = model.context_length();
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if model.position() + prompt.len() > context {
        return Err(EngineError::PromptTooLong {
            prompt: model.position() + prompt.len(),
            context,
        });
    }
    let mut sampler = Sampler::new(options.sampling)?;
    let mut history = prompt.to_vec();
    let mut decoder = tokenizer.stream_decoder();
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut emit = |piece: String, text: &mut String| {
        if piece.is_empty() {
            return ControlFlow::Continue(());
        }
        text.push_str(&piece);
        on_text(&piece)
    };

    let start = Instant::now();
    let mut logits = model.feed(prompt)?;
    let prefill_seconds = start.elapsed().as_secs_f64();
    let mut time_to_first_token = None;
    let mut decode_seconds = 0.0;
    let mut decode_steps = 0usize;
    let finish = loop {
        if tokens.len() >= options.max_tokens {
            break FinishReason::Length;
        }
        let token = sampler.sample(&mut logits, &history)?;
        time_to_first_token.get_or_insert_with(|| start.elapsed().as_secs_f64());
        if token == tokenizer.eos_id() {
            break FinishReason::Eos;
        }
        tokens.push(token);
        history.push(token);
        if let ControlFlow::Break(reason) = emit(decoder.push(token), &mut text) {
            break reason;
        }
        if tokens.len() >= options.max_tokens || model.position() >= context {
            break FinishReason::Length;
        }
        let step = Instant::now();
        logits = model.feed(&[token])?;
        decode_seconds += step.elapsed().as_secs_f64();
        decode_steps += 1;
    };
    let finish = match finish {
        FinishReason::Stop | FinishReason::Cancelled => finish,
        _ => match emit(decoder.finish(), &mut text) {
            ControlFlow::Break(reason) => reason,
            ControlFlow::Continue(()) => finish,
        },
    };

    let resident = memory::resident();
    let per_second = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Ok(Generation {
        stats: Stats {
            prompt_tokens: prompt.len(),
            generated_tokens: tokens.len(),
            load_seconds: 0.0,
            time_to_first_token_seconds: time_to_first_token.unwrap_or(prefill_seconds),
            prefill_tokens_per_second: per_second(prompt.len(), prefill_seconds),
            decode_tokens_per_second: per_second(decode_steps, decode_seconds),
            rss_anon_bytes: resident.anon_bytes,
            rss_file_bytes: resident.file_bytes,
        },
        tokens,
        text,
        finish,
    })
}

/// The prompt `ember quantize` stores as an image's self-test.
pub const SELF_TEST_PROMPT: &str = "Once upon a time, in a small village by the sea,";
/// Most tokens of a self-test's greedy continuation.
pub const SELF_TEST_TOKENS: usize = 8;
/// Context positions a self-test runs in (its prompt and continuation must fit).
pub const SELF_TEST_CONTEXT: usize = 256;

/// The greedy continuation of the plain-text `prompt` (after the beginning-of-sequence token
/// when `add_bos`), at most [`SELF_TEST_TOKENS`] tokens: what an image's self-test records
/// when the image is made and compares on the device before switching to it.
pub fn self_test_tokens(
    model: &mut dyn LanguageModel,
    tokenizer: &Tokenizer,
    prompt: &str,
    add_bos: bool,
) -> Result<Vec<u32>, EngineError> {
    let mut ids = Vec::new();
    if add_bos && let Some(bos) = tokenizer.bos_id() {
        ids.push(bos);
    }
    ids.extend(tokenizer.encode(prompt)?);
    let options = GenerateOptions {
        max_tokens: SELF_TEST_TOKENS,
        sampling: SamplingConfig::default(),
    };
    model.reset();
    let generation = generate(model, tokenizer, &ids, &options, &mut |_| {})?;
    Ok(generation.tokens)
}
