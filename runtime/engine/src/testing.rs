//! A fake model and a small tokenizer for unit tests of generation and chat, here and (with
//! the `testing` feature) in the crates that drive a chat, such as `emberd`'s in-process tests.

use crate::{EngineError, LanguageModel};
use ember_tokenizer::{Tokenizer, Vocabulary};

/// The end-of-sequence token of [`tokenizer`].
pub const EOS: u32 = 256;

/// A byte-level tokenizer without merges: token ids 0–255 are the bytes (so ids 0–3 are not
/// printable and 97–100 are `a`–`d`), 256 ends the sequence.
pub fn tokenizer() -> Tokenizer {
    // GPT-2's byte-to-character table: printable bytes stand for themselves, the others for
    // the characters from U+0100 on.
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut next = 0x100;
    let symbols: Vec<String> = (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).expect("a character").to_string()
        })
        .collect();
    let mut tokens: Vec<&str> = symbols.iter().map(String::as_str).collect();
    tokens.push("<eos>");
    let mut token_types = vec![1; 256];
    token_types.push(3);
    Tokenizer::from_vocabulary(Vocabulary {
        model: "gpt2",
        pre: "default",
        tokens,
        token_types,
        merges: vec![],
        scores: vec![],
        add_space_prefix: false,
        bos: None,
        eos: Some(EOS),
    })
    .expect("a byte-level tokenizer")
}

/// ChatML without a default system prompt, as SmolLM2's template renders it otherwise.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// [`CHATML`] for `tokenizer`'s model.
pub fn chatml(tokenizer: &Tokenizer) -> crate::ChatFormat {
    crate::ChatFormat::new(Some(CHATML), tokenizer, false).expect("ChatML compiles")
}

/// A deterministic model: after position p its most likely token is the byte `a` + p mod 4,
/// or the end of the sequence once `eos_at` positions are in the cache. Records every batch it
/// is fed.
pub struct Counting {
    /// Positions in the cache.
    pub position: usize,
    /// Most positions the cache holds.
    pub context: usize,
    /// The position from which the end of the sequence is most likely.
    pub eos_at: usize,
    /// How many tokens each call to `feed` took.
    pub batches: Vec<usize>,
    /// How long each call to `feed` takes (a model with some speed, for tests of cancels).
    pub delay: std::time::Duration,
}

impl Counting {
    /// A model that ends the sequence at position `eos_at`, with a context of 1024.
    pub fn new(eos_at: usize) -> Self {
        Counting {
            position: 0,
            context: 1024,
            eos_at,
            batches: Vec::new(),
            delay: std::time::Duration::ZERO,
        }
    }
}

impl LanguageModel for Counting {
    fn context_length(&self) -> usize {
        self.context
    }
    fn position(&self) -> usize {
        self.position
    }
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        std::thread::sleep(self.delay);
        self.position += tokens.len();
        self.batches.push(tokens.len());
        let mut logits = vec![0.0; EOS as usize + 1];
        let best = if self.position >= self.eos_at {
            EOS as usize
        } else {
            usize::from(b'a') + self.position % 4
        };
        logits[best] = 1.0;
        Ok(logits)
    }
    fn reset(&mut self) {
        self.position = 0;
    }
}
