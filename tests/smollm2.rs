//! SmolLM2-135M-Instruct through Ember's tokenizer and f32 reference engine, checked against
//! llama.cpp's answers on the same GGUF file, recorded in `models/smollm2-135m/reference/`
//! (see the README there for how they were made). Fetches the model on first use.

use ember_core::sampler::argmax;
use ember_e2e::{ember, last_json_line, smollm2, smollm2_reference, stdout_of};
use ember_engine::{ReferenceModel, ReferenceSession};
use ember_gguf::GgufFile;
use ember_tokenizer::Tokenizer;

fn ids(value: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).expect("a list of token ids")
}

#[test]
fn tokenizer_ids_match_llama_cpp() {
    let file = GgufFile::open(smollm2()).unwrap();
    let tokenizer = Tokenizer::from_gguf(file.metadata()).unwrap();
    let reference = smollm2_reference("tokenizer_ids.json");
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        assert_eq!(tokenizer.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(tokenizer.decode(&want), text, "decoding {text:?}");
        let mut decoder = tokenizer.stream_decoder();
        let mut streamed = String::new();
        for &id in &want {
            streamed.push_str(&decoder.push(id));
        }
        streamed.push_str(&decoder.finish());
        assert_eq!(streamed, text, "streaming {text:?}");
    }
}

#[test]
fn greedy_chat_replies_match_llama_cpp() {
    let model = smollm2();
    let reference = smollm2_reference("chat_replies.json");
    let max_tokens = reference["max_tokens"].to_string();
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let output = ember(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--chat",
            "--prompt",
            prompt,
            "--max-tokens",
            &max_tokens,
            "--json",
        ]);
        let result = last_json_line(&stdout_of(&output));
        assert_eq!(
            result["stats"]["prompt_tokens"].as_u64().unwrap() as usize,
            case["prompt_ids"].as_array().unwrap().len(),
            "prompt length of {prompt:?}"
        );
        assert_eq!(
            ids(&result["tokens"]),
            ids(&case["reply_ids"]),
            "reply to {prompt:?}: ember said {:?}, llama.cpp {:?}",
            result["text"],
            case["reply_text"]
        );
        assert_eq!(result["finish"], case["finish"], "finish of {prompt:?}");
    }
}

#[test]
fn teacher_forced_top1_agrees_with_llama_cpp() {
    let file = GgufFile::open(smollm2()).unwrap();
    let model = ReferenceModel::load(&file).unwrap();
    let reference = smollm2_reference("teacher_forced.json");
    let text_ids = ids(&reference["ids"]);
    let llama_top1 = ids(&reference["top1"]);
    assert!(text_ids.len() >= 150);
    let mut session = ReferenceSession::new(&model, text_ids.len());
    let logits = session.logits_at_each(&text_ids).unwrap();
    let agree = logits
        .iter()
        .zip(&llama_top1)
        .filter(|(l, want)| argmax(l) == **want)
        .count();
    let share = agree as f64 / llama_top1.len() as f64;
    eprintln!(
        "teacher-forced top-1 agreement with llama.cpp: {agree}/{} = {:.1}%",
        llama_top1.len(),
        share * 100.0
    );
    assert!(share >= 0.98, "agreement {share:.3} below 0.98");
}
