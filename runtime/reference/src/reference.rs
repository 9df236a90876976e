//! The reference forward pass: a Llama-family decoder in plain `f32`, written to be read.
//!
//! Every weight is dequantized from the GGUF file once at load. One call of
//! [`ReferenceModel::forward`] runs one token through the model:
//!
//! ```text
//! x = embedding[token]                              (Gemma: · √n_embd)
//! for each block:
//!     h = rmsnorm(x) · attn_norm
//!     q, k, v = Wq·h, Wk·h, Wv·h          (k, v have n_head_kv heads: grouped-query attention)
//!                                         (Qwen2: + bq, bk, bv)
//!                                         (Qwen3, Gemma: each q and k head = rmsnorm(head) · q_norm / k_norm)
//!     rotate q and k by RoPE at this position, append k, v to the cache
//!     each query head attends over the cached keys/values of its KV head (causal, softmax;
//!         Gemma's sliding-window layers only over the last `window` positions)
//!     a = Wo · attention                      (Gemma: a = rmsnorm(a) · post_attention_norm)
//!     x += a
//!     h = rmsnorm(x) · ffn_norm
//!     f = W_down · (silu(W_gate·h) ⊙ W_up·h)  (Gemma: gelu_tanh instead of silu, then
//!                                              f = rmsnorm(f) · post_ffw_norm)
//!     x += f
//! logits = embedding · (rmsnorm(x) · output_norm)      (the LM head is tied to the embedding)
//!                                         (if soft-capped: cap · tanh(logits / cap))
//! ```
//!
//! RoPE rotates adjacent pairs `(2i, 2i+1)`: llama.cpp's converter permutes the rows of Wq and Wk
//! of Llama models so that this "normal" rotation of GGUF weights equals Hugging Face's
//! rotate-half rotation of the original weights; for the other families the rows are reordered
//! the same way as they are read ([`crate::gguf::rope_row_order`]).

use crate::{ModelError, WeightSource};
use ember_core::image::Architecture;
use ember_engine::{EngineError, LanguageModel};
use ember_gguf::GgufError;
use rayon::prelude::*;

/// A row-major matrix: `rows` rows of `cols` values (a GGUF 2-D tensor, `dims = [cols, rows]`).
struct Matrix {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Matrix {
    /// out = self · x.
    fn matvec(&self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.cols);
        debug_assert_eq!(out.len(), self.rows);
        const ROWS_PER_TASK: usize = 32;
        out.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(chunk, out)| {
                let first = chunk * ROWS_PER_TASK;
                for (i, y) in out.iter_mut().enumerate() {
                    let row = &self.data[(first + i) * self.cols..][..self.cols];
                    *y = dot(row, x);
                }
            });
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..][..self.cols]
    }
}

/// Dot product with eight independent sums, so the compiler can vectorize it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for k in 0..8 {
            sums[k] += ca[k] * cb[k];
        }
    }
    let tail: f32 = a[chunks..]
        .iter()
        .zip(&b[chunks..])
        .map(|(x, y)| x * y)
        .sum();
    sums.iter().sum::<f32>() + tail
}

/// out = x / sqrt(mean(x²) + eps) · weight.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_square + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// Rotates adjacent pairs of the first `rope_dim` values of one head by position-dependent angles.
fn rope(head: &mut [f32], position: usize, rope_dim: usize, base: f32) {
    for i in (0..rope_dim).step_by(2) {
        let frequency = (base as f64).powf(-(i as f64) / rope_dim as f64);
        let angle = position as f64 * frequency;
        let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
        let (a, b) = (head[i], head[i + 1]);
        head[i] = a * cos - b * sin;
        head[i + 1] = a * sin + b * cos;
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (Gemma's FFN), in ggml's form.
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// Softmax in place.
fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// The weights of one transformer block.
struct Block {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    /// Biases of the query, key and value projections (Qwen2).
    qkv_bias: Option<[Vec<f32>; 3]>,
    /// RMSNorm weights of each query head and each key head (Qwen3, Gemma 3).
    qk_norm: Option<[Vec<f32>; 2]>,
    wo: Matrix,
    /// RMSNorm weights applied to the attention's and the FFN's outputs (Gemma 3).
    post_norms: Option<[Vec<f32>; 2]>,
    ffn_norm: Vec<f32>,
    w_gate: Matrix,
    w_up: Matrix,
    w_down: Matrix,
}

/// Keys and values of every position seen so far, for every block.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per block: `capacity × kv_dim` keys.
    keys: Vec<Vec<f32>>,
    /// Per block: `capacity × kv_dim` values.
    values: Vec<Vec<f32>>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions from `len` on (e.g. to start a new conversation).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// A Llama-family model with all weights in `f32`.
pub struct ReferenceModel {
    config: Architecture,
    embedding: Matrix,
    /// The LM head; `None` when tied to the embedding.
    output: Option<Matrix>,
    output_norm: Vec<f32>,
    blocks: Vec<Block>,
}

impl ReferenceModel {
    /// Decodes every weight of a Llama model (GGUF file or Ember image) to `f32`.
    pub fn load(file: &dyn WeightSource) -> Result<Self, ModelError> {
        let config = file.architecture()?;
        let dims = |name: &str| {
            file.dims(name)
                .ok_or_else(|| ModelError::Gguf(GgufError::MissingTensor(name.into())))
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>, ModelError> {
            let found = dims(name)?;
            if found != [len as u64] {
                return Err(ModelError::TensorShape {
                    name: name.into(),
                    expected: vec![len],
                    found,
                });
            }
            file.values(name)
        };
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Matrix, ModelError> {
            let found = dims(name)?;
            if found != [cols as u64, rows as u64] {
                return Err(ModelError::TensorShape {
                    name: name.into(),
                    expected: vec![cols, rows],
                    found,
                });
            }
            Ok(Matrix {
                data: file.values(name)?,
                rows,
                cols,
            })
        };
        let c = &config;
        let (q_dim, kv_dim, hd) = (c.q_dim(), c.kv_dim(), c.head_dim());
        let family = c.family();
        let blocks = (0..c.n_layers)
            .map(|i| {
                let name = |part: &str| format!("blk.{i}.{part}.weight");
                let bias = |part: &str, len| vector(&format!("blk.{i}.{part}.bias"), len);
                Ok(Block {
                    attn_norm: vector(&name("attn_norm"), c.n_embd)?,
                    wq: matrix(&name("attn_q"), q_dim, c.n_embd)?,
                    wk: matrix(&name("attn_k"), kv_dim, c.n_embd)?,
                    wv: matrix(&name("attn_v"), kv_dim, c.n_embd)?,
                    qkv_bias: match family.has_qkv_bias() {
                        true => Some([
                            bias("attn_q", q_dim)?,
                            bias("attn_k", kv_dim)?,
                            bias("attn_v", kv_dim)?,
                        ]),
                        false => None,
                    },
                    qk_norm: match family.has_qk_norm() {
                        true => Some([
                            vector(&name("attn_q_norm"), hd)?,
                            vector(&name("attn_k_norm"), hd)?,
                        ]),
                        false => None,
                    },
                    wo: matrix(&name("attn_output"), c.n_embd, q_dim)?,
                    post_norms: match family.is_gemma() {
                        true => Some([
                            vector(&name("post_attention_norm"), c.n_embd)?,
                            vector(&name("post_ffw_norm"), c.n_embd)?,
                        ]),
                        false => None,
                    },
                    ffn_norm: vector(&name("ffn_norm"), c.n_embd)?,
                    w_gate: matrix(&name("ffn_gate"), c.n_ff, c.n_embd)?,
                    w_up: matrix(&name("ffn_up"), c.n_ff, c.n_embd)?,
                    w_down: matrix(&name("ffn_down"), c.n_embd, c.n_ff)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let output = match file.dims("output.weight") {
            Some(_) => Some(matrix("output.weight", c.vocab_size, c.n_embd)?),
            None => None,
        };
        Ok(ReferenceModel {
            embedding: matrix("token_embd.weight", c.vocab_size, c.n_embd)?,
            output,
            output_norm: vector("output_norm.weight", c.n_embd)?,
            blocks,
            config,
        })
    }

    /// The model's shape.
    pub fn architecture(&self) -> &Architecture {
        &self.config
    }

    /// An empty cache for up to `capacity` positions (at most the context length).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let capacity = capacity.min(self.config.context_length);
        let size = capacity * self.config.kv_dim();
        KvCache {
            keys: vec![vec![0.0; size]; self.config.n_layers],
            values: vec![vec![0.0; size]; self.config.n_layers],
            len: 0,
            capacity,
        }
    }

    /// Runs `token` at the next position of `cache`, appends its keys and values, and returns
    /// the logits of the next token (or `None` when `want_logits` is false, which skips the
    /// LM head — the costliest matrix — for prompt tokens whose prediction is not needed).
    pub fn forward(
        &self,
        token: u32,
        cache: &mut KvCache,
        want_logits: bool,
    ) -> Result<Option<Vec<f32>>, EngineError> {
        let c = &self.config;
        if token as usize >= c.vocab_size {
            return Err(EngineError::TokenOutOfRange {
                token,
                vocab: c.vocab_size,
            });
        }
        if cache.len >= cache.capacity {
            return Err(EngineError::ContextFull {
                capacity: cache.capacity,
            });
        }
        let position = cache.len;
        let (hd, kv_dim) = (c.head_dim(), c.kv_dim());
        let group = c.n_head / c.n_head_kv;

        let gemma = c.family().is_gemma();
        let mut x = self.embedding.row(token as usize).to_vec();
        if gemma {
            let scale = (c.n_embd as f32).sqrt();
            x.iter_mut().for_each(|x| *x *= scale);
        }
        let mut h = vec![0.0; c.n_embd];
        let mut q = vec![0.0; c.q_dim()];
        let mut attention = vec![0.0; c.q_dim()];
        let mut projected = vec![0.0; c.n_embd];
        let mut normed = vec![0.0; c.n_embd.max(hd)];
        let mut gate = vec![0.0; c.n_ff];
        let mut up = vec![0.0; c.n_ff];
        let mut scores = vec![0.0; position + 1];
        let add = |x: &mut [f32], y: &[f32]| x.iter_mut().zip(y).for_each(|(x, y)| *x += y);

        for (layer, block) in self.blocks.iter().enumerate() {
            // Attention.
            rms_norm(&x, &block.attn_norm, c.rms_eps, &mut h);
            block.wq.matvec(&h, &mut q);
            let keys = &mut cache.keys[layer];
            let values = &mut cache.values[layer];
            let k = &mut keys[position * kv_dim..][..kv_dim];
            block.wk.matvec(&h, k);
            let v = &mut values[position * kv_dim..][..kv_dim];
            block.wv.matvec(&h, v);
            if let Some([bq, bk, bv]) = &block.qkv_bias {
                add(&mut q, bq);
                add(k, bk);
                add(v, bv);
            }
            if let Some([q_norm, k_norm]) = &block.qk_norm {
                let heads = q.chunks_exact_mut(hd).map(|head| (head, q_norm));
                for (head, weight) in heads.chain(k.chunks_exact_mut(hd).map(|head| (head, k_norm)))
                {
                    rms_norm(head, weight, c.rms_eps, &mut normed[..hd]);
                    head.copy_from_slice(&normed[..hd]);
                }
            }
            for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                rope(head, position, c.rope_dim, c.rope_base_of(layer));
            }
            // A sliding-window layer sees the last `window` positions, its own included.
            let first = c
                .window(layer)
                .map_or(0, |w| (position + 1).saturating_sub(w));
            let scale = 1.0 / (hd as f32).sqrt();
            for head in 0..c.n_head {
                let kv_head = head / group;
                let q_head = &q[head * hd..][..hd];
                let scores = &mut scores[first..];
                for (t, score) in (first..).zip(scores.iter_mut()) {
                    *score = dot(q_head, &keys[t * kv_dim + kv_head * hd..][..hd]) * scale;
                }
                softmax(scores);
                let out = &mut attention[head * hd..][..hd];
                out.fill(0.0);
                for (t, &weight) in (first..).zip(scores.iter()) {
                    let v = &values[t * kv_dim + kv_head * hd..][..hd];
                    for (o, v) in out.iter_mut().zip(v) {
                        *o += weight * v;
                    }
                }
            }
            block.wo.matvec(&attention, &mut projected);
            if let Some([post_attention, _]) = &block.post_norms {
                rms_norm(
                    &projected,
                    post_attention,
                    c.rms_eps,
                    &mut normed[..c.n_embd],
                );
                projected.copy_from_slice(&normed[..c.n_embd]);
            }
            add(&mut x, &projected);

            // Feed-forward (SwiGLU; Gemma: GeGLU).
            rms_norm(&x, &block.ffn_norm, c.rms_eps, &mut h);
            block.w_gate.matvec(&h, &mut gate);
            block.w_up.matvec(&h, &mut up);
            let activation = if gemma { gelu_tanh } else { silu };
            gate.iter_mut()
                .zip(&up)
                .for_each(|(g, u)| *g = activation(*g) * u);
            block.w_down.matvec(&gate, &mut projected);
            if let Some([_, post_ffw]) = &block.post_norms {
                rms_norm(&projected, post_ffw, c.rms_eps, &mut normed[..c.n_embd]);
                projected.copy_from_slice(&normed[..c.n_embd]);
            }
            add(&mut x, &projected);
        }
        cache.len += 1;

        if !want_logits {
            return Ok(None);
        }
        rms_norm(&x, &self.output_norm, c.rms_eps, &mut h);
        let mut logits = vec![0.0; c.vocab_size];
        self.output
            .as_ref()
            .unwrap_or(&self.embedding)
            .matvec(&h, &mut logits);
        let cap = c.variant.logit_softcap;
        if cap > 0.0 {
            logits.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
        Ok(Some(logits))
    }
}

/// A conversation with a [`ReferenceModel`]: the model and its KV cache.
pub struct ReferenceSession<'m> {
    model: &'m ReferenceModel,
    cache: KvCache,
}

impl<'m> ReferenceSession<'m> {
    /// A session whose cache holds up to `capacity` positions (at most the context length).
    pub fn new(model: &'m ReferenceModel, capacity: usize) -> Self {
        ReferenceSession {
            model,
            cache: model.new_cache(capacity),
        }
    }
}

impl LanguageModel for ReferenceSession<'_> {
    fn context_length(&self) -> usize {
        self.cache.capacity()
    }

    fn position(&self) -> usize {
        self.cache.len()
    }

    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let Some((&last, rest)) = tokens.split_last() else {
            return Err(EngineError::EmptyPrompt);
        };
        if self.cache.len() + tokens.len() > self.cache.capacity() {
            return Err(EngineError::PromptTooLong {
                prompt: self.cache.len() + tokens.len(),
                context: self.cache.capacity(),
            });
        }
        for &token in rest {
            self.model.forward(token, &mut self.cache, false)?;
        }
        Ok(self
            .model
            .forward(last, &mut self.cache, true)?
            .unwrap_or_default())
    }

    fn reset(&mut self) {
        self.cache.truncate(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_at_position_zero_is_the_identity_and_preserves_length() {
        let original = [1.0f32, 2.0, 3.0, 4.0];
        let mut head = original;
        rope(&mut head, 0, 4, 10_000.0);
        assert_eq!(head, original);
        rope(&mut head, 17, 4, 10_000.0);
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
        assert!((norm(&head) - norm(&original)).abs() < 1e-4);
        // The first pair turns by exactly `position` radians (frequency 1).
        let angle = (head[1]).atan2(head[0]) - 2.0f32.atan2(1.0);
        let wrapped = (angle - 17.0).rem_euclid(std::f32::consts::TAU);
        assert!(!(1e-3..=std::f32::consts::TAU - 1e-3).contains(&wrapped));
    }

    #[test]
    fn dot_and_rms_norm_match_their_definitions() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
        let mut out = [0.0f32; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 8.0 / rms).abs() < 1e-6);
    }
}
