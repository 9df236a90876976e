//! `tokenizer.json` and `tokenizer_config.json`: the vocabulary, merges, special tokens and chat
//! template, as GGUF's `tokenizer.*` keys (byte-level BPE only).

use crate::{Config, HfError, read_json};
use ember_gguf::{GgufWriter, Value, ValueType};
use ember_tokenizer::{LLAMA3_SPLIT, QWEN2_SPLIT};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::path::Path;

/// GGUF token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

#[derive(Deserialize)]
struct TokenizerJson {
    model: Model,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    normalizer: Option<Json>,
    pre_tokenizer: Option<Json>,
}

#[derive(Deserialize)]
struct Model {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    vocab: Json,
    #[serde(default)]
    merges: Vec<Merge>,
    #[serde(default)]
    byte_fallback: bool,
}

/// A merge rule: `"a b"` (tokenizers before 0.20) or `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Merge {
    Joined(String),
    Pair([String; 2]),
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    chat_template: Option<Json>,
    bos_token: Option<Json>,
    eos_token: Option<Json>,
    add_bos_token: Option<bool>,
}

/// A special token as `tokenizer_config.json` names it: its text, or `{"content": …}`.
fn token_text(token: &Json) -> Option<&str> {
    token
        .as_str()
        .or_else(|| token.get("content").and_then(Json::as_str))
}

/// llama.cpp's names for the pre-tokenizers Ember runs, told apart by their structure.
fn pre_tokenizer_name(pre: Option<&Json>) -> Result<&'static str, HfError> {
    let byte_level = json!({"type": "ByteLevel", "use_regex": true});
    let is_byte_level =
        |p: &Json| p["type"] == byte_level["type"] && p.get("use_regex").is_none_or(|r| *r == true);
    let Some(pre) = pre else {
        return Err(HfError::Unsupported(
            "a byte-level BPE without a pre-tokenizer".into(),
        ));
    };
    if is_byte_level(pre) {
        return Ok("gpt2");
    }
    let steps = pre["pretokenizers"].as_array().map(Vec::as_slice);
    if pre["type"] == "Sequence"
        && let Some([digits, last]) = steps
        && digits["type"] == "Digits"
        && digits["individual_digits"] == true
        && is_byte_level(last)
    {
        return Ok("smollm");
    }
    // Qwen2's and Llama 3's: a regular expression, then bytes without GPT-2's own split.
    if pre["type"] == "Sequence"
        && let Some([split, last]) = steps
        && split["type"] == "Split"
        && split["behavior"] == "Isolated"
        && split["invert"] != true
        && last["type"] == "ByteLevel"
        && last["use_regex"] == false
    {
        match split["pattern"]["Regex"].as_str() {
            Some(QWEN2_SPLIT) => return Ok("qwen2"),
            Some(LLAMA3_SPLIT) => return Ok("llama-bpe"),
            _ => {}
        }
    }
    Err(HfError::Unsupported(format!(
        "the pre-tokenizer {pre} (Ember runs GPT-2's byte-level split, alone or after single digits as SmolLM2's, and Qwen2's and Llama 3's splits)"
    )))
}

/// Writes the `tokenizer.*` keys from `dir`'s tokenizer files.
pub fn write_metadata(dir: &Path, config: &Config, gguf: &mut GgufWriter) -> Result<(), HfError> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(HfError::Missing {
            dir: dir.to_owned(),
            file: "tokenizer.json",
            why: "the tokenizer (Ember reads Hugging Face's fast-tokenizer file)",
        });
    }
    let tokenizer: TokenizerJson = read_json(&path)?;
    let config_path = dir.join("tokenizer_config.json");
    let settings: TokenizerConfig = if config_path.is_file() {
        read_json(&config_path)?
    } else {
        TokenizerConfig::default()
    };
    let model = &tokenizer.model;
    match model.kind.as_deref() {
        Some("BPE") | None if model.vocab.is_object() => {}
        other => {
            return Err(HfError::Unsupported(format!(
                "the tokenizer model {} (Ember reads byte-level BPE tokenizer.json files)",
                other.unwrap_or("without a type")
            )));
        }
    }
    if model.byte_fallback {
        return Err(HfError::Unsupported(
            "a BPE tokenizer with byte fallback (SentencePiece-style); Ember reads byte-level BPE"
                .into(),
        ));
    }
    if tokenizer.normalizer.as_ref().is_some_and(|n| !n.is_null()) {
        return Err(HfError::Unsupported(format!(
            "the tokenizer's normalizer {}",
            tokenizer.normalizer.as_ref().unwrap_or(&Json::Null)
        )));
    }
    let pre = pre_tokenizer_name(tokenizer.pre_tokenizer.as_ref())?;

    // Tokens by id: the model's vocabulary, then the added tokens, then padding up to the
    // embedding's rows (as llama.cpp's converter does).
    let mut by_id: BTreeMap<u32, (String, i32)> = BTreeMap::new();
    let inconsistent = |detail: String| HfError::Tensor {
        name: "tokenizer.json".into(),
        detail,
    };
    for (token, id) in model.vocab.as_object().into_iter().flatten() {
        let id = id
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| inconsistent(format!("token {token:?} has the id {id}")))?;
        if by_id.insert(id, (token.clone(), NORMAL)).is_some() {
            return Err(inconsistent(format!("two tokens have the id {id}")));
        }
    }
    for added in &tokenizer.added_tokens {
        let kind = if added.special { CONTROL } else { USER_DEFINED };
        match by_id.get_mut(&added.id) {
            Some((token, ty)) if *token == added.content => *ty = kind,
            Some((token, _)) => {
                return Err(inconsistent(format!(
                    "added token {:?} has the id {} of {token:?}",
                    added.content, added.id
                )));
            }
            None => {
                by_id.insert(added.id, (added.content.clone(), kind));
            }
        }
    }
    let count = by_id.len().max(config.vocab_size);
    if let Some((&last, _)) = by_id.last_key_value()
        && last as usize >= count
    {
        return Err(inconsistent(format!(
            "token id {last} is beyond the vocabulary of {count}"
        )));
    }
    let (mut tokens, mut types) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for id in 0..count as u32 {
        let (token, ty) = by_id
            .remove(&id)
            .unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED));
        tokens.push(Value::String(token));
        types.push(Value::I32(ty));
    }
    let merges = model
        .merges
        .iter()
        .map(|m| {
            Value::String(match m {
                Merge::Joined(rule) => rule.clone(),
                Merge::Pair([a, b]) => format!("{a} {b}"),
            })
        })
        .collect();
    let id_of = |token: &Option<Json>| {
        let text = token_text(token.as_ref()?)?;
        tokens
            .iter()
            .position(|t| matches!(t, Value::String(s) if s == text))
            .map(|i| i as u32)
    };
    let bos = id_of(&settings.bos_token).or(config.bos_token_id.as_ref().and_then(|t| t.first()));
    let eos = id_of(&settings.eos_token).or(config.eos_token_id.as_ref().and_then(|t| t.first()));

    let s = |v: &str| Value::String(v.into());
    gguf.add_metadata("tokenizer.ggml.model", s("gpt2"))?
        .add_metadata("tokenizer.ggml.pre", s(pre))?
        .add_metadata(
            "tokenizer.ggml.tokens",
            Value::Array(ValueType::String, tokens),
        )?
        .add_metadata(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types),
        )?
        .add_metadata(
            "tokenizer.ggml.merges",
            Value::Array(ValueType::String, merges),
        )?
        .add_metadata(
            "tokenizer.ggml.add_bos_token",
            Value::Bool(settings.add_bos_token.unwrap_or(false)),
        )?;
    if let Some(bos) = bos {
        gguf.add_metadata("tokenizer.ggml.bos_token_id", Value::U32(bos))?;
    }
    if let Some(eos) = eos {
        gguf.add_metadata("tokenizer.ggml.eos_token_id", Value::U32(eos))?;
    }
    if let Some(template) = chat_template(settings.chat_template.as_ref()) {
        gguf.add_metadata("tokenizer.chat_template", s(template))?;
    }
    Ok(())
}

/// The chat template: a string, or the one named `default` among several.
fn chat_template(template: Option<&Json>) -> Option<&str> {
    let template = template?;
    template.as_str().or_else(|| {
        template
            .as_array()?
            .iter()
            .find(|t| t["name"] == "default")?
            .get("template")?
            .as_str()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pre_tokenizer` of Qwen2.5's tokenizer.json, as transformers writes it.
    fn qwen2() -> Json {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated",
             "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
             "use_regex": false}]})
    }

    #[test]
    fn pre_tokenizers_are_told_apart_by_their_structure() {
        assert_eq!(pre_tokenizer_name(Some(&qwen2())).unwrap(), "qwen2");
        let mut llama3 = qwen2();
        llama3["pretokenizers"][0]["pattern"]["Regex"] = json!(LLAMA3_SPLIT);
        assert_eq!(pre_tokenizer_name(Some(&llama3)).unwrap(), "llama-bpe");
        let gpt2 = json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true});
        assert_eq!(pre_tokenizer_name(Some(&gpt2)).unwrap(), "gpt2");
        let mut other = qwen2();
        other["pretokenizers"][0]["pattern"]["Regex"] = json!("\\s+");
        assert!(matches!(
            pre_tokenizer_name(Some(&other)),
            Err(HfError::Unsupported(_))
        ));
        assert!(pre_tokenizer_name(None).is_err());
    }
}
