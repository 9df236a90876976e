//! A model's tokenizer, built with Hugging Face's `tokenizers` crate from its vocabulary, merges
//! and token types: an Ember image's tokenizer section ([`Tokenizer::from_image`]) or any
//! [`Vocabulary`] (`ember-reference` reads one from a GGUF file's `tokenizer.ggml.*` keys).
//!
//! Supported: byte-level BPE (`tokenizer.ggml.model = gpt2`) with the `smollm` pre-tokenizer
//! (each digit on its own, then GPT-2's split) or the plain GPT-2 one (`gpt2`, `default`); and
//! SentencePiece BPE from token scores (`llama`, Gemma's; [`spm`]'s own code, as llama.cpp runs
//! it), without a space prefix. Control and user-defined tokens (`<|im_start|>` …) are
//! recognised in the text as single tokens.
//! [`StreamDecoder`] turns generated ids into text piece by piece, whole characters only.

#![warn(missing_docs)]

mod spm;

use ember_core::{
    image::{TokenizerData, TokenizerSpec},
    utf8::Utf8Stream,
};
use tokenizers::{
    AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    decoders::byte_level::ByteLevel as ByteLevelDecoder,
    models::bpe::BPE,
    pre_tokenizers::{
        byte_level::ByteLevel,
        digits::Digits,
        sequence::Sequence,
        split::{Split, SplitPattern},
    },
};

/// GGUF token type of a control token such as `<|im_end|>`.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of a token added by the model's authors, matched verbatim in text.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
/// GGUF token type of a SentencePiece byte token (`<0x41>`).
const TOKEN_TYPE_BYTE: i64 = 6;

/// Why a tokenizer could not be built or could not encode.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The vocabulary is neither byte-level BPE nor SentencePiece BPE.
    #[error(
        "unsupported tokenizer model {0:?} (Ember supports byte-level BPE, \"gpt2\", and SentencePiece BPE without a space prefix, \"llama\")"
    )]
    UnsupportedModel(String),
    /// A pre-tokenizer Ember does not implement.
    #[error(
        "unsupported pre-tokenizer {0:?} (Ember supports \"smollm\", \"gpt2\", \"qwen2\", \"llama-bpe\" and \"default\")"
    )]
    UnsupportedPreTokenizer(String),
    /// A merge rule that is not two tokens separated by one space.
    #[error("malformed merge rule #{index}: {rule:?}")]
    BadMerge {
        /// Position in `tokenizer.ggml.merges`.
        index: usize,
        /// The rule.
        rule: String,
    },
    /// Token list and type list disagree, or a special token id is out of range.
    #[error("inconsistent vocabulary: {0}")]
    Inconsistent(String),
    /// The `tokenizers` library refused the vocabulary or the input.
    #[error("tokenizer: {0}")]
    Library(String),
}

/// What a tokenizer is built from (as stored in a GGUF file or an Ember image).
#[derive(Debug, Clone)]
pub struct Vocabulary<'a> {
    /// Tokenizer model; only `gpt2` (byte-level BPE) is supported.
    pub model: &'a str,
    /// Pre-tokenizer name.
    pub pre: &'a str,
    /// Token strings by id.
    pub tokens: Vec<&'a str>,
    /// GGUF token types by id (1 normal, 3 control, 4 user-defined, …).
    pub token_types: Vec<i64>,
    /// Merge rules `"a b"` by rank (byte-level BPE).
    pub merges: Vec<&'a str>,
    /// Scores by id (SentencePiece; empty for byte-level BPE).
    pub scores: Vec<f32>,
    /// Whether SentencePiece text starts with a space (llama.cpp's `add_space_prefix`; Ember
    /// supports SentencePiece without it, as Gemma's).
    pub add_space_prefix: bool,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token (required).
    pub eos: Option<u32>,
}

/// How text becomes ids.
enum Encoder {
    /// Byte-level BPE, by the `tokenizers` crate.
    Bpe(Box<tokenizers::Tokenizer>),
    /// SentencePiece BPE from scores.
    SentencePiece(spm::SentencePiece),
}

/// A model's tokenizer and the facts about its special tokens.
pub struct Tokenizer {
    encoder: Encoder,
    /// Ids of tokens by their vocabulary string.
    ids: ahash::AHashMap<String, u32>,
    /// Raw bytes of every token (special tokens: their text).
    token_bytes: Vec<Vec<u8>>,
    bos: Option<u32>,
    eos: u32,
    /// Tokens that end a reply besides `eos`: llama.cpp's end-of-generation tokens, known by
    /// their text (`<|endoftext|>`, `<|im_end|>`, `<end_of_turn>`, …).
    end_of_generation: Vec<u32>,
}

/// Texts of the tokens llama.cpp ends generation at whatever the file names its end-of-sequence
/// token (`llama-vocab.cpp`'s list).
const END_OF_GENERATION: [&str; 10] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.token_bytes.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer stored in an Ember image.
    pub fn from_image(spec: &TokenizerSpec, data: &TokenizerData) -> Result<Self, TokenizerError> {
        Self::from_vocabulary(Vocabulary {
            model: &spec.model,
            pre: &spec.pre,
            tokens: data.tokens.iter().map(String::as_str).collect(),
            token_types: data.token_types.iter().map(|&t| t as i64).collect(),
            merges: data.merges.iter().map(String::as_str).collect(),
            scores: data.scores.clone(),
            add_space_prefix: false,
            bos: spec.bos,
            eos: Some(spec.eos),
        })
    }

    /// Builds a tokenizer from its parts.
    pub fn from_vocabulary(vocabulary: Vocabulary<'_>) -> Result<Self, TokenizerError> {
        let Vocabulary {
            model,
            pre,
            tokens,
            token_types: types,
            merges,
            scores,
            add_space_prefix,
            bos,
            eos,
        } = vocabulary;
        if types.len() != tokens.len() {
            return Err(TokenizerError::Inconsistent(format!(
                "{} tokens but {} token types",
                tokens.len(),
                types.len()
            )));
        }
        let ids: ahash::AHashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.to_string(), id as u32))
            .collect();
        if ids.len() != tokens.len() {
            return Err(TokenizerError::Inconsistent(
                "the vocabulary holds the same token twice".into(),
            ));
        }
        let special = |ty: i64| matches!(ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED);
        let (encoder, token_bytes) = match model {
            "gpt2" => {
                let encoder = byte_level_bpe(&tokens, &types, merges, pre, ids.clone())?;
                let byte_of_char = byte_level_decoding_table();
                let token_bytes = tokens
                    .iter()
                    .zip(&types)
                    .map(|(token, &ty)| match special(ty) {
                        true => token.as_bytes().to_vec(),
                        false => token
                            .chars()
                            .flat_map(|c| match byte_of_char(c) {
                                Some(b) => vec![b],
                                None => c.to_string().into_bytes(),
                            })
                            .collect(),
                    })
                    .collect();
                (Encoder::Bpe(Box::new(encoder)), token_bytes)
            }
            "llama" if add_space_prefix => {
                return Err(TokenizerError::UnsupportedModel(
                    "llama (SentencePiece) with a space prefix".into(),
                ));
            }
            "llama" => {
                let encoder = spm::SentencePiece::new(&tokens, &scores, |i| special(types[i]))?;
                let token_bytes = tokens
                    .iter()
                    .zip(&types)
                    .map(|(token, &ty)| spm::token_bytes(token, ty == TOKEN_TYPE_BYTE))
                    .collect();
                (Encoder::SentencePiece(encoder), token_bytes)
            }
            other => return Err(TokenizerError::UnsupportedModel(other.into())),
        };

        let in_range = |what: &str, id: Option<u32>| match id {
            Some(id) if id as usize >= tokens.len() => Err(TokenizerError::Inconsistent(format!(
                "{what} token {id} is outside the vocabulary of {}",
                tokens.len()
            ))),
            other => Ok(other),
        };
        let bos = in_range("beginning-of-sequence", bos)?;
        let eos = in_range("end-of-sequence", eos)?.ok_or_else(|| {
            TokenizerError::Inconsistent("the end-of-sequence token is missing".into())
        })?;
        let end_of_generation = tokens
            .iter()
            .zip(0..)
            .filter(|(token, id)| END_OF_GENERATION.contains(*token) && *id != eos)
            .map(|(_, id)| id)
            .collect();
        Ok(Tokenizer {
            encoder,
            ids,
            token_bytes,
            bos,
            eos,
            end_of_generation,
        })
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.encoder {
            Encoder::Bpe(bpe) => Ok(bpe
                .encode(text, false)
                .map_err(|e| TokenizerError::Library(e.to_string()))?
                .get_ids()
                .to_vec()),
            Encoder::SentencePiece(spm) => spm.encode(text),
        }
    }

    /// The text of `ids` (special tokens included; invalid UTF-8 replaced by U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The raw bytes a token stands for (empty for an id outside the vocabulary).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The id of a token given by its vocabulary string (e.g. `<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Beginning-of-sequence token, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Whether `token` ends a reply: the end-of-sequence token or another of llama.cpp's
    /// end-of-generation tokens in the vocabulary.
    pub fn ends_generation(&self, token: u32) -> bool {
        token == self.eos || self.end_of_generation.contains(&token)
    }

    /// A decoder for streaming generated tokens as text.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            utf8: Utf8Stream::new(),
        }
    }
}

/// Qwen2's split (Qwen2/2.5/3 GGUFs' `qwen2`), as its `tokenizer.json` writes it: contractions
/// in any case, letters with one sign before them, each digit alone, signs with the newlines
/// after them, newline runs, spaces.
pub const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split (`llama-bpe`): Qwen2's with digits in runs of up to three.
pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's splits for a byte-level BPE that names no pre-tokenizer (`default`), in turn.
const DEFAULT_SPLITS: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// The byte-level BPE tokenizer of `tokens` (ids `ids`) and its `merges`, with the pre-tokenizer
/// `pre`.
fn byte_level_bpe(
    tokens: &[&str],
    types: &[i64],
    merges: Vec<&str>,
    pre: &str,
    ids: ahash::AHashMap<String, u32>,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let merges = merges
        .into_iter()
        .enumerate()
        .map(|(index, rule)| match rule.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                Ok((a.to_string(), b.to_string()))
            }
            _ => Err(TokenizerError::BadMerge {
                index,
                rule: rule.into(),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(ids, merges)
        .build()
        .map_err(|e| TokenizerError::Library(e.to_string()))?;
    let byte_level = ByteLevel::new(false, true, true);
    // Splits by llama.cpp's regular expressions (in turn), then bytes to GPT-2's characters.
    let splits = |patterns: &[&str]| -> Result<PreTokenizerWrapper, TokenizerError> {
        let mut steps = patterns
            .iter()
            .map(|pattern| {
                Split::new(
                    SplitPattern::Regex(pattern.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map(PreTokenizerWrapper::from)
                .map_err(|e| TokenizerError::Library(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        steps.push(ByteLevel::new(false, true, false).into());
        Ok(Sequence::new(steps).into())
    };
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "gpt2" | "gpt-2" => byte_level.into(),
        "default" => splits(&DEFAULT_SPLITS)?,
        "qwen2" | "deepseek-r1-qwen" => splits(&[QWEN2_SPLIT])?,
        "llama3" | "llama-v3" | "llama-bpe" => splits(&[LLAMA3_SPLIT])?,
        other => return Err(TokenizerError::UnsupportedPreTokenizer(other.into())),
    };
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(DecoderWrapper::from(ByteLevelDecoder::default())));
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, ty)| matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
        .map(|(token, ty)| AddedToken::from(token.to_string(), *ty == TOKEN_TYPE_CONTROL))
        .collect();
    inner.add_special_tokens(&added);
    Ok(inner)
}

/// Decodes generated tokens one at a time into whole UTF-8 characters.
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    utf8: Utf8Stream,
}

impl StreamDecoder<'_> {
    /// The text completed by `id` (possibly empty while a character is unfinished).
    pub fn push(&mut self, id: u32) -> String {
        let mut out = String::new();
        self.utf8
            .push(self.tokenizer.token_bytes(id), &mut |s: &str| {
                out.push_str(s)
            });
        out
    }

    /// Whatever is left at the end of the stream (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.utf8.finish(&mut |s: &str| out.push_str(s));
        out
    }
}

/// GPT-2's byte-level alphabet, reversed: the byte each printable stand-in character encodes.
/// Printable Latin-1 bytes stand for themselves; the other 68 bytes map to U+0100 onwards.
fn byte_level_decoding_table() -> impl Fn(char) -> Option<u8> {
    let mut table = std::collections::HashMap::with_capacity(256);
    let mut next_stand_in = 256u32;
    for byte in 0u32..=255 {
        let printable = (33..=126).contains(&byte)
            || (161..=172).contains(&byte)
            || (174..=255).contains(&byte);
        let stand_in = if printable {
            byte
        } else {
            next_stand_in += 1;
            next_stand_in - 1
        };
        if let Some(c) = char::from_u32(stand_in) {
            table.insert(c, byte as u8);
        }
    }
    move |c| table.get(&c).copied()
}
