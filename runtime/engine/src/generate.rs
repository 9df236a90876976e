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
    generate_until(model, tokenizer, prompt, options, &mut |progress| {
        if let Progress::Text(text) = progress {
            on_text(text);
        }
        ControlFlow::Continue(())
    })
}

/// How far a generation has come, as [`generate_until`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// `fed` of the prompt's `total` tokens are in the cache (after each slice of the prompt).
    Prefill {
        /// Tokens of the prompt fed so far.
        fed: usize,
        /// Tokens in the prompt.
        total: usize,
    },
    /// More of the reply: a run of whole characters.
    Text(&'a str),
}

/// [`generate`], reporting the prompt's prefill as it goes, where `on_progress` may end
/// generation early by returning the reason ([`FinishReason::Stop`] or
/// [`FinishReason::Cancelled`]) — during the prefill too, between two slices of the prompt. The
/// token whose text ended it is part of the generation but not fed to the model (as when the
/// token limit ends it).
pub fn generate_until(
    model: &mut dyn LanguageModel,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    on_progress: &mut dyn FnMut(Progress<'_>) -> ControlFlow<FinishReason>,
) -> Result<Generation, EngineError> {
    let mut generator = Generator::new(model, tokenizer, prompt, options)?;
    loop {
        let reported = match generator.step()? {
            Step::Prefilled { fed, total } => on_progress(Progress::Prefill { fed, total }),
            Step::Text(piece) if piece.is_empty() => ControlFlow::Continue(()),
            Step::Text(piece) => on_progress(Progress::Text(&piece)),
            Step::Finished => break,
        };
        if let ControlFlow::Break(reason) = reported {
            generator.stop(reason);
        }
    }
    Ok(generator.into_generation())
}

/// How long one slice of a prompt's prefill should take: a cancel waits for the slice under
/// way. Slices are sized from the speed of the ones before.
pub const PREFILL_SLICE: std::time::Duration = std::time::Duration::from_millis(40);
/// The fewest prompt tokens a slice takes (the first slice takes this many): each slice reads
/// all the weights once more. A prompt with fewer than twice as many is fed in one slice.
pub const MIN_PREFILL_SLICE: usize = 16;
/// The most prompt tokens a slice takes (the last one up to [`MIN_PREFILL_SLICE`] more): it
/// bounds a prefill's activations and how far past its window a sliding-window layer's cache
/// reaches.
pub const MAX_PREFILL_SLICE: usize = 256;

/// What one [`Generator::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Fed a slice of the prompt: `fed` of its `total` tokens are in the cache.
    Prefilled {
        /// Tokens of the prompt fed so far.
        fed: usize,
        /// Tokens in the prompt.
        total: usize,
    },
    /// Generated a token (or flushed the last characters): its text, whole characters only
    /// (empty while a character is incomplete).
    Text(String),
    /// Nothing more: [`Generator::into_generation`] gives the result.
    Finished,
}

/// A generation the caller steps, one slice of the prompt or one token at a time, so that it
/// can read its input (a cancel, a stop) between any two steps.
pub struct Generator<'m> {
    model: &'m mut dyn LanguageModel,
    tokenizer: &'m Tokenizer,
    max_tokens: usize,
    sampler: Sampler,
    decoder: ember_tokenizer::StreamDecoder<'m>,
    /// Tokens in the prompt.
    prompt_len: usize,
    /// Tokens of the prompt in the cache.
    fed: usize,
    /// The prompt and the tokens generated (the sampler's repetition window).
    history: Vec<u32>,
    tokens: Vec<u32>,
    text: String,
    /// The logits after the last token fed.
    logits: Vec<f32>,
    /// The last token generated, sampled but not fed yet.
    unfed: Option<u32>,
    /// Why it ends, once known; `flushed` once the decoder's last characters went out.
    ending: Option<FinishReason>,
    flushed: bool,
    start: Instant,
    prefill_seconds: f64,
    time_to_first_token: Option<f64>,
    decode_seconds: f64,
    decode_steps: usize,
}

impl<'m> Generator<'m> {
    /// A generation of a continuation of `prompt` (appended to whatever `model` holds); nothing
    /// runs until [`Generator::step`].
    pub fn new(
        model: &'m mut dyn LanguageModel,
        tokenizer: &'m Tokenizer,
        prompt: &[u32],
        options: &GenerateOptions,
    ) -> Result<Self, EngineError> {
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
        Ok(Generator {
            model,
            tokenizer,
            max_tokens: options.max_tokens,
            sampler: Sampler::new(options.sampling)?,
            decoder: tokenizer.stream_decoder(),
            prompt_len: prompt.len(),
            fed: 0,
            history: prompt.to_vec(),
            tokens: Vec::new(),
            text: String::new(),
            logits: Vec::new(),
            unfed: None,
            ending: None,
            flushed: false,
            start: Instant::now(),
            prefill_seconds: 0.0,
            time_to_first_token: None,
            decode_seconds: 0.0,
            decode_steps: 0,
        })
    }

    /// Does the next piece of work: feeds a slice of the prompt, or generates one token, or
    /// flushes the last characters once it ends.
    pub fn step(&mut self) -> Result<Step, EngineError> {
        // A stop during the prefill leaves the rest of the prompt unfed.
        if self.ending.is_none() && self.fed < self.prompt_len {
            return self.prefill();
        }
        if let Some(reason) = self.ending {
            if self.flushed || matches!(reason, FinishReason::Stop | FinishReason::Cancelled) {
                return Ok(Step::Finished);
            }
            self.flushed = true;
            let piece = self.decoder.finish();
            return Ok(Step::Text(self.emit(piece)));
        }
        if self.tokens.len() >= self.max_tokens {
            return self.end(FinishReason::Length);
        }
        if let Some(token) = self.unfed {
            if self.model.position() >= self.model.context_length() {
                return self.end(FinishReason::Length);
            }
            let step = Instant::now();
            self.logits = self.model.feed(&[token])?;
            self.unfed = None;
            self.decode_seconds += step.elapsed().as_secs_f64();
            self.decode_steps += 1;
        }
        let token = self.sampler.sample(&mut self.logits, &self.history)?;
        let start = self.start;
        self.time_to_first_token
            .get_or_insert_with(|| start.elapsed().as_secs_f64());
        if self.tokenizer.ends_generation(token) {
            return self.end(FinishReason::Eos);
        }
        self.tokens.push(token);
        self.history.push(token);
        self.unfed = Some(token);
        let piece = self.decoder.push(token);
        Ok(Step::Text(self.emit(piece)))
    }

    /// Ends the generation for `reason` (a stop sequence, a cancel): the next step finishes
    /// it, without flushing characters the decoder holds back.
    pub fn stop(&mut self, reason: FinishReason) {
        self.ending = Some(reason);
        self.flushed = true;
    }

    /// The generation: its tokens, text, why it ended and its statistics.
    pub fn into_generation(self) -> Generation {
        let resident = memory::resident();
        let per_second = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        let prefill_seconds = self.prefill_seconds;
        Generation {
            stats: Stats {
                prompt_tokens: self.prompt_len,
                generated_tokens: self.tokens.len(),
                load_seconds: 0.0,
                time_to_first_token_seconds: self.time_to_first_token.unwrap_or(prefill_seconds),
                prefill_tokens_per_second: per_second(self.fed, prefill_seconds),
                decode_tokens_per_second: per_second(self.decode_steps, self.decode_seconds),
                rss_anon_bytes: resident.anon_bytes,
                rss_file_bytes: resident.file_bytes,
            },
            tokens: self.tokens,
            text: self.text,
            finish: self.ending.unwrap_or(FinishReason::Cancelled),
        }
    }

    /// Feeds the next slice of the prompt.
    fn prefill(&mut self) -> Result<Step, EngineError> {
        let total = self.prompt_len;
        let left = total - self.fed;
        let size = if self.fed == 0 {
            MIN_PREFILL_SLICE
        } else {
            // Tokens per slice at the speed so far.
            let rate = self.fed as f64 / self.prefill_seconds.max(1e-6);
            ((rate * PREFILL_SLICE.as_secs_f64()) as usize)
                .clamp(MIN_PREFILL_SLICE, MAX_PREFILL_SLICE)
        };
        // Never leave a last slice shorter than the shortest.
        let size = if left < size + MIN_PREFILL_SLICE {
            left
        } else {
            size
        };
        self.logits = self.model.feed(&self.history[self.fed..self.fed + size])?;
        self.fed += size;
        self.prefill_seconds = self.start.elapsed().as_secs_f64();
        Ok(Step::Prefilled {
            fed: self.fed,
            total,
        })
    }

    fn end(&mut self, reason: FinishReason) -> Result<Step, EngineError> {
        self.ending = Some(reason);
        self.step()
    }

    /// Adds `piece` to the text and returns it.
    fn emit(&mut self, piece: String) -> String {
        self.text.push_str(&piece);
        piece
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Counting, tokenizer};

    fn options(max_tokens: usize) -> GenerateOptions {
        GenerateOptions {
            max_tokens,
            sampling: SamplingConfig::default(),
        }
    }

    #[test]
    fn the_prompt_is_fed_in_slices_that_cover_it_once() {
        let tokenizer = tokenizer();
        let mut model = Counting::new(usize::MAX);
        let prompt = vec![0u32; 300];
        let mut reported = Vec::new();
        let generation = generate_until(&mut model, &tokenizer, &prompt, &options(3), &mut |p| {
            if let Progress::Prefill { fed, total } = p {
                assert_eq!(total, 300);
                reported.push(fed);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        let slices = model.batches.len() - 2;
        let fed: Vec<usize> = model.batches[..slices]
            .iter()
            .scan(0, |sum, n| {
                *sum += n;
                Some(*sum)
            })
            .collect();
        assert_eq!(reported, fed);
        assert_eq!(fed.last(), Some(&300));
        assert_eq!(model.batches[0], MIN_PREFILL_SLICE);
        assert!(
            model.batches[..slices]
                .iter()
                .all(|&n| n >= MIN_PREFILL_SLICE)
        );
        // Then one token at a time; the last generated token is not fed.
        assert_eq!(model.batches[slices..], [1, 1]);
        assert_eq!(generation.tokens, [97, 98, 99]);
        assert_eq!(generation.text, "abc");
        assert_eq!(generation.finish, FinishReason::Length);
        assert_eq!(generation.stats.prompt_tokens, 300);
    }

    #[test]
    fn a_short_prompt_is_fed_whole() {
        let tokenizer = tokenizer();
        let mut model = Counting::new(usize::MAX);
        let prompt = vec![1u32; 2 * MIN_PREFILL_SLICE - 1];
        generate(&mut model, &tokenizer, &prompt, &options(1), &mut |_| {}).unwrap();
        assert_eq!(model.batches, [2 * MIN_PREFILL_SLICE - 1]);
    }

    #[test]
    fn a_cancel_during_the_prefill_leaves_the_rest_of_the_prompt_unfed() {
        let tokenizer = tokenizer();
        let mut model = Counting::new(usize::MAX);
        let prompt = vec![2u32; 400];
        let generation =
            generate_until(
                &mut model,
                &tokenizer,
                &prompt,
                &options(9),
                &mut |p| match p {
                    Progress::Prefill { .. } => ControlFlow::Break(FinishReason::Cancelled),
                    Progress::Text(_) => panic!("no token after a cancel"),
                },
            )
            .unwrap();
        assert_eq!(model.batches, [MIN_PREFILL_SLICE]);
        assert_eq!(generation.finish, FinishReason::Cancelled);
        assert!(generation.tokens.is_empty() && generation.text.is_empty());
    }

    #[test]
    fn the_end_of_sequence_and_a_stop_end_it_as_before() {
        let tokenizer = tokenizer();
        // Prompt of 3: tokens for positions 3, 4, then the end at 5.
        let mut model = Counting::new(5);
        let generation =
            generate(&mut model, &tokenizer, &[0, 0, 0], &options(9), &mut |_| {}).unwrap();
        assert_eq!(generation.tokens, [100, 97]);
        assert_eq!(generation.finish, FinishReason::Eos);
        assert_eq!(model.batches, [3, 1, 1]);

        let mut model = Counting::new(usize::MAX);
        let mut pieces = 0;
        let generation = generate_until(&mut model, &tokenizer, &[0; 3], &options(9), &mut |p| {
            if matches!(p, Progress::Text(_)) {
                pieces += 1;
                if pieces == 2 {
                    return ControlFlow::Break(FinishReason::Stop);
                }
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(generation.tokens, [100, 97]);
        assert_eq!(generation.finish, FinishReason::Stop);
        // The token whose text stopped it is not fed.
        assert_eq!(model.batches, [3, 1]);
    }

    #[test]
    fn stepping_by_hand_gives_the_same_generation() {
        let tokenizer = tokenizer();
        let mut model = Counting::new(usize::MAX);
        let mut generator = Generator::new(&mut model, &tokenizer, &[1; 20], &options(4)).unwrap();
        let mut steps = Vec::new();
        loop {
            let step = generator.step().unwrap();
            if step == Step::Finished {
                break;
            }
            steps.push(step);
        }
        let generation = generator.into_generation();
        assert_eq!(
            steps,
            [
                Step::Prefilled { fed: 20, total: 20 },
                Step::Text("a".into()),
                Step::Text("b".into()),
                Step::Text("c".into()),
                Step::Text("d".into()),
                Step::Text(String::new()),
            ]
        );
        assert_eq!(generation.text, "abcd");
    }
}
