//! Byte-level BPE under each pre-tokenizer Ember runs gives llama.cpp's ids, on a vocabulary
//! whose merges join what one pre-tokenizer keeps together and another splits (digit runs,
//! contractions in capitals, punctuation before letters or newlines, runs of spaces):
//! `tests/fixtures/tiny/pretokenizers.json`, made by `make_pretokenizer_golden.py` there with
//! llama.cpp's own tokenizer.

use ember_tokenizer::{Tokenizer, TokenizerError, Vocabulary};
use serde_json::Value;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny/pretokenizers.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

fn tokenizer(golden: &Value, pre: &str) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_vocabulary(Vocabulary {
        model: "gpt2",
        pre,
        tokens: strings(&golden["tokens"]),
        token_types: golden["token_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect(),
        merges: strings(&golden["merges"]),
        scores: vec![],
        add_space_prefix: false,
        bos: None,
        eos: Some(0),
    })
}

#[test]
fn each_pre_tokenizer_splits_as_llama_cpp_does() {
    let golden = golden();
    let mut checked = 0;
    for (pre, cases) in golden["pre_tokenizers"].as_object().unwrap() {
        let tokenizer = tokenizer(&golden, pre).unwrap();
        for case in cases.as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tokenizer.encode(text).unwrap(), ids, "{pre}: {text:?}");
            assert_eq!(tokenizer.decode(&ids), text, "{pre}: {text:?}");
            checked += 1;
        }
    }
    assert!(checked >= 80, "{checked}");
}

/// The cases tell the pre-tokenizers apart: no two give the same ids for every string.
#[test]
fn the_cases_tell_the_pre_tokenizers_apart() {
    let golden = golden();
    let all = golden["pre_tokenizers"].as_object().unwrap();
    for (a, x) in all {
        for (b, y) in all {
            assert!(a == b || x != y, "{a} and {b} split every case alike");
        }
    }
}

#[test]
fn an_unknown_pre_tokenizer_is_refused() {
    match tokenizer(&golden(), "jais") {
        Err(TokenizerError::UnsupportedPreTokenizer(name)) => assert_eq!(name, "jais"),
        other => panic!("{other:?}"),
    }
}
