//! `ember synth`: a tiny decoder GGUF with random weights, for tests that must run without
//! downloading anything.
//!
//! The file is a function of the seed and the family alone (integer arithmetic and exact f32
//! scaling, no platform maths), so every machine writes the same bytes. The Llama one has the
//! shape of SmolLM2 in miniature: 2 blocks, width 64, 4 query heads sharing 2 KV heads, a SwiGLU
//! FFN of 192, a tied Q8_0 embedding, a byte-level BPE vocabulary of 299 tokens (3 ChatML control
//! tokens, 256 bytes, 40 English merges) and a ChatML template. Weights mix F32, F16, Q8_0, Q4_0
//! and Q4_1 so every reader path is exercised. The other families add what sets them apart
//! ([`Family`]): Qwen2 biases on Q/K/V; Qwen3 per-head Q/K norms and heads of 32 (wider than
//! the width's share, as Qwen3's are); Gemma 3 those, norms after attention and FFN, 6 blocks
//! (five within a window of 8 positions, the sixth global) and GeGLU.

use ember_core::image::Family;
use ember_core::sampler::SplitMix64;
use ember_gguf::{GgufError, GgufWriter, TensorType, Value, ValueType, quantize};

/// Width of the residual stream.
pub const N_EMBD: usize = 64;
/// Number of transformer blocks.
pub const N_LAYERS: usize = 2;
/// Query heads.
pub const N_HEAD: usize = 4;
/// Key/value heads.
pub const N_HEAD_KV: usize = 2;
/// FFN hidden width.
pub const N_FF: usize = 192;
/// Trained context length written to the file.
pub const CONTEXT: usize = 512;

/// Weights are uniform in ±amplitude. The embedding dominates the residual stream, so the model
/// makes confident predictions (a trained model's top choice stands well clear of the rest; a
/// random model's would sit in near-ties that any rounding flips) — through `output.weight`, a
/// permutation of the embedding rows, so greedy text moves on instead of echoing. The blocks are
/// scaled to keep their outputs near unit size (fan-in 64 resp. 192), so context still matters.
const EMBEDDING_AMPLITUDE: f32 = 1.0;
/// Amplitude of the attention and gate/up projections.
const WEIGHT_AMPLITUDE: f32 = 0.22;
/// Amplitude of the down projection (a wider fan-in).
const DOWN_AMPLITUDE: f32 = 0.13;

/// Control tokens, ids 0–2, as in SmolLM2.
const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Merge rules over GPT-2's byte alphabet (`Ġ` is a space), in rank order.
const MERGES: [(&str, &str); 40] = [
    ("Ġ", "t"),
    ("Ġ", "a"),
    ("h", "e"),
    ("i", "n"),
    ("r", "e"),
    ("o", "n"),
    ("Ġt", "he"),
    ("e", "r"),
    ("Ġ", "s"),
    ("a", "t"),
    ("Ġ", "w"),
    ("Ġ", "o"),
    ("e", "n"),
    ("Ġ", "c"),
    ("i", "t"),
    ("i", "s"),
    ("a", "n"),
    ("o", "r"),
    ("e", "s"),
    ("Ġ", "b"),
    ("e", "d"),
    ("Ġ", "f"),
    ("in", "g"),
    ("Ġ", "p"),
    ("o", "u"),
    ("Ġa", "n"),
    ("a", "l"),
    ("a", "r"),
    ("Ġt", "o"),
    ("Ġ", "m"),
    ("Ġo", "f"),
    ("Ġ", "in"),
    ("Ġ", "d"),
    ("Ġ", "h"),
    ("Ġan", "d"),
    ("i", "c"),
    ("a", "s"),
    ("l", "e"),
    ("Ġt", "h"),
    ("i", "on"),
];

/// The ChatML template, as SmolLM2 writes it, with the tiny model's default system prompt.
const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny synthetic test model.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's printable stand-in for each byte.
fn byte_token(byte: u8) -> char {
    let b = byte as u32;
    let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    if printable {
        return char::from(byte);
    }
    let rank = (0..b)
        .filter(|&x| {
            !((33..=126).contains(&x) || (161..=172).contains(&x) || (174..=255).contains(&x))
        })
        .count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

/// The vocabulary: control tokens, byte tokens, merged tokens.
fn vocabulary() -> (Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; SPECIAL_TOKENS.len()];
    for byte in 0..=255u8 {
        tokens.push(byte_token(byte).to_string());
        types.push(1);
    }
    for (a, b) in MERGES {
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    (tokens, types)
}

/// Uniform values in `[-amplitude, amplitude)` with 24 random bits each.
fn uniform(rng: &mut SplitMix64, count: usize, center: f32, amplitude: f32) -> Vec<f32> {
    (0..count)
        .map(|_| {
            let unit = (rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32;
            center + (unit * 2.0 - 1.0) * amplitude
        })
        .collect()
}

/// Gemma 3's tiny model: blocks (every sixth attends globally, as in llama.cpp's Gemma 3).
const GEMMA_LAYERS: usize = 6;
/// Gemma 3's tiny model: positions a sliding-window layer sees (short enough that prompts and
/// replies outgrow it).
const GEMMA_WINDOW: usize = 8;
/// Head width of the Qwen3 and Gemma 3 tiny models (given in the file, not the width's share).
const WIDE_HEAD: usize = 32;

/// Writes the tiny model of `family` for `seed` as GGUF bytes.
pub fn tiny_model(seed: u64, family: Family) -> Result<Vec<u8>, GgufError> {
    let (tokens, types) = vocabulary();
    let vocab = tokens.len();
    let arch = family.name();
    let head_dim = match family {
        Family::Llama | Family::Qwen2 => N_EMBD / N_HEAD,
        Family::Qwen3 | Family::Gemma3 => WIDE_HEAD,
    };
    let (q_dim, kv_dim) = (N_HEAD * head_dim, N_HEAD_KV * head_dim);
    let layers = if family.is_gemma() {
        GEMMA_LAYERS
    } else {
        N_LAYERS
    };
    let mut w = GgufWriter::new();
    let s = |v: &str| Value::String(v.into());
    let u = |v: usize| Value::U32(v as u32);
    let key = |name: &str| format!("{arch}.{name}");
    w.add_metadata("general.architecture", s(arch))?
        .add_metadata("general.name", s("ember-tiny"))?
        .add_metadata("general.license", s("Apache-2.0"))?
        .add_metadata("ember.synth_seed", Value::U64(seed))?
        .add_metadata(&key("block_count"), u(layers))?
        .add_metadata(&key("context_length"), u(CONTEXT))?
        .add_metadata(&key("embedding_length"), u(N_EMBD))?
        .add_metadata(&key("feed_forward_length"), u(N_FF))?
        .add_metadata(&key("attention.head_count"), u(N_HEAD))?
        .add_metadata(&key("attention.head_count_kv"), u(N_HEAD_KV))?;
    if family == Family::Llama {
        w.add_metadata(&key("rope.freq_base"), Value::F32(10_000.0))?
            .add_metadata(&key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))?;
    } else {
        w.add_metadata(&key("rope.freq_base"), Value::F32(1_000_000.0))?
            .add_metadata(&key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6))?
            .add_metadata(&key("attention.key_length"), u(head_dim))?
            .add_metadata(&key("attention.value_length"), u(head_dim))?;
    }
    if family.is_gemma() {
        w.add_metadata(&key("attention.sliding_window"), u(GEMMA_WINDOW))?;
    }
    w.add_metadata(&key("rope.dimension_count"), u(head_dim))?
        .add_metadata(&key("vocab_size"), u(vocab))?
        .add_metadata("tokenizer.ggml.model", s("gpt2"))?
        .add_metadata("tokenizer.ggml.pre", s("smollm"))?
        .add_metadata(
            "tokenizer.ggml.tokens",
            Value::Array(
                ValueType::String,
                tokens.into_iter().map(Value::String).collect(),
            ),
        )?
        .add_metadata(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
        )?
        .add_metadata(
            "tokenizer.ggml.merges",
            Value::Array(
                ValueType::String,
                MERGES.iter().map(|(a, b)| s(&format!("{a} {b}"))).collect(),
            ),
        )?
        .add_metadata("tokenizer.ggml.bos_token_id", u(1))?
        .add_metadata("tokenizer.ggml.eos_token_id", u(2))?
        .add_metadata("tokenizer.ggml.padding_token_id", u(2))?
        .add_metadata("tokenizer.ggml.add_bos_token", Value::Bool(false))?
        .add_metadata("tokenizer.ggml.add_space_prefix", Value::Bool(false))?
        .add_metadata("tokenizer.chat_template", s(CHAT_TEMPLATE))?;

    let mut rng = SplitMix64::new(seed);
    let embedding = uniform(&mut rng, N_EMBD * vocab, 0.0, EMBEDDING_AMPLITUDE);
    // Gemma scales the embedding by √width (8, exactly) as it reads it: stored 8 times smaller,
    // it enters the blocks at the size a Llama's does, so that context (and the sliding window)
    // still weighs on the predictions.
    let stored_embedding: Vec<f32> = match family.is_gemma() {
        true => embedding.iter().map(|v| v / 8.0).collect(),
        false => embedding.clone(),
    };
    let mut tensor = |w: &mut GgufWriter,
                      name: &str,
                      dims: &[usize],
                      ty: TensorType,
                      center: f32,
                      amplitude: f32|
     -> Result<(), GgufError> {
        let count = dims.iter().product();
        let values = uniform(&mut rng, count, center, amplitude);
        let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        w.add_tensor(name, &dims, ty, quantize(ty, &values)?)?;
        Ok(())
    };
    use TensorType::*;
    let embedding_dims = [N_EMBD as u64, vocab as u64];
    w.add_tensor(
        "token_embd.weight",
        &embedding_dims,
        Q8_0,
        quantize(Q8_0, &stored_embedding)?,
    )?;
    for i in 0..layers {
        let n = |part: &str| format!("blk.{i}.{part}.weight");
        tensor(&mut w, &n("attn_norm"), &[N_EMBD], F32, 1.0, 0.1)?;
        tensor(
            &mut w,
            &n("attn_q"),
            &[N_EMBD, q_dim],
            Q4_1,
            0.0,
            WEIGHT_AMPLITUDE,
        )?;
        tensor(
            &mut w,
            &n("attn_k"),
            &[N_EMBD, kv_dim],
            Q4_1,
            0.0,
            WEIGHT_AMPLITUDE,
        )?;
        tensor(
            &mut w,
            &n("attn_v"),
            &[N_EMBD, kv_dim],
            F16,
            0.0,
            WEIGHT_AMPLITUDE,
        )?;
        if family.has_qkv_bias() {
            for (part, len) in [("attn_q", q_dim), ("attn_k", kv_dim), ("attn_v", kv_dim)] {
                let name = format!("blk.{i}.{part}.bias");
                tensor(&mut w, &name, &[len], F32, 0.0, WEIGHT_AMPLITUDE)?;
            }
        }
        if family.has_qk_norm() {
            tensor(&mut w, &n("attn_q_norm"), &[head_dim], F32, 1.0, 0.3)?;
            tensor(&mut w, &n("attn_k_norm"), &[head_dim], F32, 1.0, 0.3)?;
        }
        tensor(
            &mut w,
            &n("attn_output"),
            &[q_dim, N_EMBD],
            Q8_0,
            0.0,
            WEIGHT_AMPLITUDE,
        )?;
        if family.is_gemma() {
            tensor(&mut w, &n("post_attention_norm"), &[N_EMBD], F32, 1.0, 0.1)?;
            tensor(&mut w, &n("post_ffw_norm"), &[N_EMBD], F32, 1.0, 0.1)?;
        }
        tensor(&mut w, &n("ffn_norm"), &[N_EMBD], F32, 1.0, 0.1)?;
        tensor(
            &mut w,
            &n("ffn_gate"),
            &[N_EMBD, N_FF],
            Q4_1,
            0.0,
            WEIGHT_AMPLITUDE,
        )?;
        tensor(
            &mut w,
            &n("ffn_up"),
            &[N_EMBD, N_FF],
            Q4_0,
            0.0,
            WEIGHT_AMPLITUDE,
        )?;
        tensor(
            &mut w,
            &n("ffn_down"),
            &[N_FF, N_EMBD],
            Q4_1,
            0.0,
            DOWN_AMPLITUDE,
        )?;
    }
    tensor(&mut w, "output_norm.weight", &[N_EMBD], F32, 1.0, 0.1)?;
    // The output row of token j is the embedding of successor⁻¹(j): the residual stream keeps
    // the current token's embedding, so the model leans towards one next token (a confident
    // prediction, as trained models make) that the blocks' context can still overturn.
    let mut successor: Vec<usize> = (0..vocab).collect();
    for i in (1..vocab).rev() {
        successor.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut output = vec![0f32; N_EMBD * vocab];
    for (token, &next) in successor.iter().enumerate() {
        output[next * N_EMBD..][..N_EMBD].copy_from_slice(&embedding[token * N_EMBD..][..N_EMBD]);
    }
    w.add_tensor(
        "output.weight",
        &embedding_dims,
        Q8_0,
        quantize(Q8_0, &output)?,
    )?;
    Ok(w.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens_are_gpt2s_alphabet() {
        assert_eq!(byte_token(b' '), 'Ġ');
        assert_eq!(byte_token(b'\n'), 'Ċ');
        assert_eq!(byte_token(b'A'), 'A');
        assert_eq!(byte_token(0), '\u{100}');
        assert_eq!(byte_token(0xAD), '\u{143}');
    }

    #[test]
    fn every_merge_joins_existing_tokens_into_a_new_one() {
        let (tokens, _) = vocabulary();
        let base = SPECIAL_TOKENS.len() + 256;
        for (i, (a, b)) in MERGES.iter().enumerate() {
            let known = &tokens[..base + i];
            assert!(
                known.iter().any(|t| t == a) && known.iter().any(|t| t == b),
                "{a} {b}"
            );
            assert!(
                !known.iter().any(|t| *t == format!("{a}{b}")),
                "{a}{b} twice"
            );
        }
    }

    #[test]
    fn the_same_seed_writes_the_same_bytes() {
        for family in [Family::Llama, Family::Qwen2, Family::Qwen3, Family::Gemma3] {
            assert_eq!(
                tiny_model(7, family).unwrap(),
                tiny_model(7, family).unwrap()
            );
            assert_ne!(
                tiny_model(7, family).unwrap(),
                tiny_model(8, family).unwrap()
            );
        }
    }
}
