//! Choosing the next token from a model's logits.
//!
//! The pipeline follows llama.cpp's order: repetition penalty → top-k → temperature → softmax →
//! top-p → draw. All arithmetic is IEEE f32/f64 with `libm`'s exponential and a fixed summation
//! order, so the same seed and settings give the same tokens on x86, aarch64 and armv7.
//! Without `alloc` the candidate list is bounded: at most [`MAX_CANDIDATES`] of the most likely
//! tokens take part in top-k/top-p sampling.

use core::fmt;

/// Upper bound on the number of candidate tokens kept for random sampling.
pub const MAX_CANDIDATES: usize = 256;

/// Upper bound on the window of recent tokens the repetition penalty looks at.
pub const MAX_PENALTY_WINDOW: usize = 256;

/// How to pick tokens. `Default` is greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; `0` (or below) means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` means no limit (beyond [`MAX_CANDIDATES`]).
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability adds up to `top_p`; `1.0` disables it.
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this; `1.0` disables it.
    pub repetition_penalty: f32,
    /// How many of the most recent tokens the repetition penalty looks at.
    pub penalty_window: u32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.0,
            penalty_window: 64,
            seed: 0,
        }
    }
}

/// A sampling setting that is out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingError {
    /// The temperature is not a finite number.
    Temperature,
    /// `top_p` is not in `(0, 1]`.
    TopP,
    /// The repetition penalty is not a finite number above zero.
    RepetitionPenalty,
    /// The penalty window is larger than [`MAX_PENALTY_WINDOW`].
    PenaltyWindow,
    /// The logits slice is empty.
    NoLogits,
}

impl fmt::Display for SamplingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SamplingError::Temperature => {
                f.write_str("temperature must be a finite number, at least 0")
            }
            SamplingError::TopP => f.write_str("top-p must be in (0, 1]"),
            SamplingError::RepetitionPenalty => {
                f.write_str("repetition penalty must be a finite number > 0")
            }
            SamplingError::PenaltyWindow => {
                write!(f, "penalty window must be at most {MAX_PENALTY_WINDOW}")
            }
            SamplingError::NoLogits => f.write_str("no logits to sample from"),
        }
    }
}

impl core::error::Error for SamplingError {}

impl SamplingConfig {
    /// Checks that every setting is in range.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SamplingError::Temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::TopP);
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(SamplingError::RepetitionPenalty);
        }
        if self.penalty_window as usize > MAX_PENALTY_WINDOW {
            return Err(SamplingError::PenaltyWindow);
        }
        Ok(())
    }

    /// True when the settings always pick the most likely token.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// SplitMix64: a small, fast, well-distributed generator with a 64-bit state.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// One candidate token with its (adjusted) logit, later its probability.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    id: u32,
    score: f32,
}

/// Picks tokens according to a [`SamplingConfig`]; holds the random generator state.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler for validated settings.
    pub fn new(config: SamplingConfig) -> Result<Self, SamplingError> {
        config.validate()?;
        Ok(Sampler {
            config,
            rng: SplitMix64::new(config.seed),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Chooses the next token. `logits` is modified in place by the repetition penalty;
    /// `history` is every token so far (prompt and reply), of which the last
    /// `penalty_window` are penalised.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32, SamplingError> {
        if logits.is_empty() {
            return Err(SamplingError::NoLogits);
        }
        self.apply_repetition_penalty(logits, history);
        if self.config.is_greedy() {
            return Ok(argmax(logits));
        }
        let limit = match self.config.top_k {
            0 => MAX_CANDIDATES,
            k => (k as usize).min(MAX_CANDIDATES),
        };
        let mut candidates = top_candidates(logits, limit);
        softmax_with_temperature(&mut candidates, self.config.temperature);
        let kept = top_p_len(&candidates, self.config.top_p);
        let total: f64 = candidates[..kept].iter().map(|c| c.score as f64).sum();
        let mut target = self.rng.next_f64() * total;
        for candidate in &candidates[..kept] {
            target -= candidate.score as f64;
            if target < 0.0 {
                return Ok(candidate.id);
            }
        }
        Ok(candidates[kept - 1].id)
    }

    fn apply_repetition_penalty(&self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.config.repetition_penalty;
        if penalty == 1.0 || self.config.penalty_window == 0 {
            return;
        }
        let window = self.config.penalty_window as usize;
        let recent = &history[history.len().saturating_sub(window)..];
        for (i, &id) in recent.iter().enumerate() {
            if recent[..i].contains(&id) {
                continue; // penalise each distinct token once
            }
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit = if *logit > 0.0 {
                    *logit / penalty
                } else {
                    *logit * penalty
                };
            }
        }
    }
}

/// Index of the largest logit; the lowest index wins a tie, NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &value) in logits.iter().enumerate() {
        if value > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// The `limit` highest logits, sorted from most to least likely (ties: lower id first).
fn top_candidates(logits: &[f32], limit: usize) -> heapless::Vec<Candidate, MAX_CANDIDATES> {
    let mut top: heapless::Vec<Candidate, MAX_CANDIDATES> = heapless::Vec::new();
    for (id, &score) in logits.iter().enumerate() {
        if score.is_nan() {
            continue;
        }
        if top.len() == limit && top.last().is_some_and(|last| score <= last.score) {
            continue;
        }
        let at = top
            .iter()
            .position(|c| score > c.score)
            .unwrap_or(top.len());
        if top.len() == limit {
            top.pop();
        }
        // Cannot fail: there is room after the pop above.
        let _ = top.insert(
            at,
            Candidate {
                id: id as u32,
                score,
            },
        );
    }
    if top.is_empty() {
        // Every logit was NaN: fall back to token 0 rather than failing.
        let _ = top.push(Candidate { id: 0, score: 0.0 });
    }
    top
}

/// Replaces scores (sorted descending) by softmax probabilities of `score / temperature`.
fn softmax_with_temperature(candidates: &mut [Candidate], temperature: f32) {
    let max = candidates[0].score;
    let mut sum = 0.0f32;
    for c in candidates.iter_mut() {
        c.score = libm::expf((c.score - max) / temperature);
        sum += c.score;
    }
    for c in candidates.iter_mut() {
        c.score /= sum;
    }
}

/// How many leading candidates to keep so their probabilities add up to at least `top_p`.
fn top_p_len(candidates: &[Candidate], top_p: f32) -> usize {
    if top_p >= 1.0 {
        return candidates.len();
    }
    let mut cumulative = 0.0f32;
    for (i, c) in candidates.iter().enumerate() {
        cumulative += c.score;
        if cumulative >= top_p {
            return i + 1;
        }
    }
    candidates.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn config(temperature: f32, top_k: u32, top_p: f32, seed: u64) -> SamplingConfig {
        SamplingConfig {
            temperature,
            top_k,
            top_p,
            seed,
            ..SamplingConfig::default()
        }
    }

    #[test]
    fn greedy_picks_the_largest_logit_and_the_lowest_id_on_ties() {
        let mut sampler = Sampler::new(SamplingConfig::default()).unwrap();
        assert_eq!(sampler.sample(&mut [0.1, 3.0, -1.0, 3.0], &[]), Ok(1));
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // SplitMix64 seeded with 1234567, computed independently by a Python transcription
        // of Vigna's splitmix64.c.
        let mut rng = SplitMix64::new(1234567);
        assert_eq!(rng.next_u64(), 6457827717110365317);
        assert_eq!(rng.next_u64(), 3203168211198807973);
        assert_eq!(rng.next_u64(), 9817491932198370423);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let logits: [f32; 8] = [1.0, 1.2, 0.9, 1.1, 0.3, 1.05, 0.0, 1.15];
        let draw = |seed| {
            let mut sampler = Sampler::new(config(1.0, 0, 1.0, seed)).unwrap();
            let mut out = [0u32; 32];
            for slot in out.iter_mut() {
                *slot = sampler.sample(&mut logits.clone(), &[]).unwrap();
            }
            out
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn sampling_follows_the_softmax_distribution() {
        // Two tokens with logits differing by ln(3): probabilities 0.75 / 0.25.
        let logits = [libm::logf(3.0), 0.0];
        let mut sampler = Sampler::new(config(1.0, 0, 1.0, 42)).unwrap();
        let n = 20_000;
        let zeros = (0..n)
            .filter(|_| sampler.sample(&mut logits.clone(), &[]).unwrap() == 0)
            .count();
        let share = zeros as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.015, "share of token 0: {share}");
    }

    #[test]
    fn top_k_never_leaves_the_k_best() {
        let logits: [f32; 6] = [0.0, 5.0, 1.0, 4.9, 4.8, 0.5];
        let mut sampler = Sampler::new(config(5.0, 3, 1.0, 3)).unwrap();
        for _ in 0..500 {
            let id = sampler.sample(&mut logits.clone(), &[]).unwrap();
            assert!([1, 3, 4].contains(&id), "picked {id}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities ≈ 0.665, 0.245, 0.090: top-p 0.6 keeps only the first.
        let logits: [f32; 3] = [2.0, 1.0, 0.0];
        let mut sampler = Sampler::new(config(1.0, 0, 0.6, 9)).unwrap();
        for _ in 0..200 {
            assert_eq!(sampler.sample(&mut logits.clone(), &[]).unwrap(), 0);
        }
        let mut sampler = Sampler::new(config(1.0, 0, 0.8, 9)).unwrap();
        let picks: heapless::Vec<u32, 200> = (0..200)
            .map(|_| sampler.sample(&mut logits.clone(), &[]).unwrap())
            .collect();
        assert!(picks.contains(&1) && !picks.contains(&2));
    }

    #[test]
    fn repetition_penalty_discourages_seen_tokens_once_each() {
        let mut sampler = Sampler::new(SamplingConfig {
            repetition_penalty: 2.0,
            ..SamplingConfig::default()
        })
        .unwrap();
        let mut logits = [3.0f32, 2.0, -1.0];
        assert_eq!(sampler.sample(&mut logits, &[0, 0, 2]).unwrap(), 1);
        assert_eq!(logits, [1.5, 2.0, -2.0]);
    }

    #[test]
    fn bad_settings_are_rejected() {
        let bad = |c: SamplingConfig| Sampler::new(c).err();
        let base = SamplingConfig::default();
        assert_eq!(
            bad(SamplingConfig {
                temperature: f32::NAN,
                ..base
            }),
            Some(SamplingError::Temperature)
        );
        assert_eq!(
            bad(SamplingConfig { top_p: 0.0, ..base }),
            Some(SamplingError::TopP)
        );
        assert_eq!(
            bad(SamplingConfig {
                repetition_penalty: 0.0,
                ..base
            }),
            Some(SamplingError::RepetitionPenalty)
        );
        assert_eq!(
            bad(SamplingConfig {
                penalty_window: 10_000,
                ..base
            }),
            Some(SamplingError::PenaltyWindow)
        );
        let mut sampler = Sampler::new(base).unwrap();
        assert_eq!(sampler.sample(&mut [], &[]), Err(SamplingError::NoLogits));
    }

    quickcheck! {
        fn sampled_ids_are_always_in_range(logits: Vec<f32>, seed: u64, temp: u8, k: u8) -> bool {
            if logits.is_empty() {
                return true;
            }
            let mut sampler = Sampler::new(config(temp as f32 / 50.0, k as u32, 0.9, seed)).unwrap();
            let mut work = logits.clone();
            let history: Vec<u32> = (0..logits.len() as u32).collect();
            (sampler.sample(&mut work, &history).unwrap() as usize) < logits.len()
        }
    }
}
