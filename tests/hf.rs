//! Hugging Face model directories: `ember quantize DIR` reads config.json, the safetensors
//! shards, tokenizer.json and tokenizer_config.json. Each directory here is written from a GGUF
//! by `models/gguf_to_hf.py` in Hugging Face's layout (Llama's query and key rows back in
//! rotate-half order, Gemma's norms as `w` instead of `1 + w`; checked in that script against
//! transformers' and safetensors' own readers): its image must be the GGUF's, weight for weight,
//! with the same tokenizer, template and architecture. Broken directories get typed errors and
//! leave nothing behind.

use ember_e2e::{
    ember, fresh_temp_dir, quantize, repo_root, smollm2, smollm2_image, stdout_of, tiny_model,
    tiny_model_of,
};
use ember_image::Image;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `python3 SCRIPT ARGS…` (a script under the repository's root).
fn python(args: &[&str]) {
    let mut args = args.to_vec();
    let script = repo_root().join(args.remove(0));
    let output = Command::new("python3")
        .arg(script)
        .args(&args)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `python3 models/gguf_to_hf.py GGUF DIR ARGS…`; returns DIR.
fn hf_dir(gguf: &Path, dir: &Path, args: &[&str]) -> PathBuf {
    let mut all = vec![
        "models/gguf_to_hf.py",
        gguf.to_str().unwrap(),
        dir.to_str().unwrap(),
    ];
    all.extend(args);
    python(&all);
    dir.to_owned()
}

/// The two images hold the same model: architecture, tokenizer, chat template, and every
/// tensor's values.
fn assert_same_model(ours: &Path, theirs: &Path) {
    let (a, b) = (Image::open(ours).unwrap(), Image::open(theirs).unwrap());
    let (ma, mb) = (a.manifest(), b.manifest());
    assert_eq!(ma.architecture, mb.architecture);
    assert_eq!(ma.tokenizer.model, mb.tokenizer.model);
    assert_eq!(ma.tokenizer.pre, mb.tokenizer.pre);
    assert_eq!(ma.tokenizer.bos, mb.tokenizer.bos);
    assert_eq!(ma.tokenizer.eos, mb.tokenizer.eos);
    assert_eq!(ma.tokenizer.add_bos, mb.tokenizer.add_bos);
    assert_eq!(ma.chat_template, mb.chat_template);
    assert_eq!(ma.self_test, mb.self_test);
    let (ta, tb) = (a.tokenizer_data().unwrap(), b.tokenizer_data().unwrap());
    assert_eq!(ta.tokens, tb.tokens);
    assert_eq!(ta.token_types, tb.token_types);
    assert_eq!(ta.merges, tb.merges);
    let mut names: Vec<&str> = ma.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut other: Vec<&str> = mb.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    other.sort();
    assert_eq!(names, other);
    for name in names {
        let (ea, eb) = (ma.tensor(name).unwrap(), mb.tensor(name).unwrap());
        assert_eq!((&ea.dims, ea.encoding), (&eb.dims, eb.encoding), "{name}");
        assert!(
            a.tensor_f32(name).unwrap() == b.tensor_f32(name).unwrap(),
            "{name} differs"
        );
    }
}

/// `ember generate --chat` replies of an image, as JSON lines.
fn replies(image: &Path) -> Vec<String> {
    ["Hi there!", "What is the capital of France?"]
        .iter()
        .map(|prompt| {
            stdout_of(&ember(&[
                "generate",
                "--model",
                image.to_str().unwrap(),
                "--prompt",
                prompt,
                "--chat",
                "-n",
                "24",
            ]))
        })
        .collect()
}

/// Each family's tiny model, written as an HF directory in f32 over two shards, makes the
/// image its GGUF makes, with the same replies.
#[test]
fn hf_directories_give_the_image_of_their_gguf() {
    let dir = fresh_temp_dir("hf-families");
    for arch in ["llama", "qwen2", "qwen3", "gemma3"] {
        eprintln!("{arch}");
        let gguf = match arch {
            "llama" => tiny_model(),
            _ => tiny_model_of(arch),
        };
        let model = hf_dir(&gguf, &dir.join(arch), &["--shards", "2"]);
        // The tiny models hold Q8_0 and Q4_0 matrices, which an image keeps block for block; the
        // directory holds their values in f32, as does the GGUF's F32 copy.
        let f32_copy = dir.join(format!("{arch}-f32.gguf"));
        python(&[
            "models/gguf_to_f32.py",
            gguf.to_str().unwrap(),
            f32_copy.to_str().unwrap(),
        ]);
        let (from_gguf, from_hf) = (
            dir.join(format!("{arch}.ember")),
            dir.join(format!("{arch}-hf.ember")),
        );
        quantize(&f32_copy, &from_gguf, &["--no-report"]);
        let report = quantize(&model, &from_hf, &[]);
        assert!(report.contains("top-1 agreement"), "{report}");
        assert_same_model(&from_hf, &from_gguf);
        assert_eq!(replies(&from_hf), replies(&from_gguf), "{arch}");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".source.gguf"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SmolLM2-135M-Instruct written as a Hugging Face directory (f32, three shards, as its
/// GGUF's Q4_1 blocks decode) makes the image its GGUF makes, with the same chat replies.
#[test]
fn smollm2_as_a_hugging_face_directory_gives_the_image_of_its_gguf() {
    let dir = fresh_temp_dir("hf-smollm2");
    let model = hf_dir(
        &smollm2(),
        &dir.join("SmolLM2-135M-Instruct"),
        &["--shards", "3"],
    );
    let image = dir.join("smollm2-hf.ember");
    quantize(&model, &image, &["--no-report"]);
    let (from_gguf, _) = smollm2_image();
    assert_same_model(&image, &from_gguf);
    assert_eq!(replies(&image), replies(&from_gguf));
    // 700 MB.
    let _ = std::fs::remove_dir_all(&dir);
}

/// BF16 and F16 directories (transformers 5's config spelling, merges as strings) are read too:
/// the same model up to the rounding of its weights.
#[test]
fn half_precision_directories_are_read() {
    let dir = fresh_temp_dir("hf-half");
    let gguf = tiny_model();
    let reference = dir.join("tiny.ember");
    quantize(&gguf, &reference, &["--no-report"]);
    for (dtype, extra) in [("bf16", "--config-style=v5"), ("f16", "--merges=strings")] {
        let model = hf_dir(&gguf, &dir.join(dtype), &["--dtype", dtype, extra]);
        let image = dir.join(format!("{dtype}.ember"));
        quantize(&model, &image, &["--no-report"]);
        let (a, b) = (
            Image::open(&image).unwrap(),
            Image::open(&reference).unwrap(),
        );
        assert_eq!(
            a.manifest().architecture,
            b.manifest().architecture,
            "{dtype}"
        );
        assert_eq!(a.manifest().tensors.len(), b.manifest().tensors.len());
        let (x, y) = (
            a.tensor_f32("blk.0.attn_q.weight").unwrap(),
            b.tensor_f32("blk.0.attn_q.weight").unwrap(),
        );
        let error = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        let largest = y.iter().map(|v| v.abs()).fold(0.0, f32::max);
        assert!(error <= largest / 64.0, "{dtype}: {error} of {largest}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ember quantize DIR` on a broken directory: a typed error naming what is wrong, exit code 1,
/// no image and no leftovers.
#[test]
fn broken_directories_get_typed_errors() {
    let dir = fresh_temp_dir("hf-broken");
    let gguf = tiny_model();
    let fails = |model: &Path, expected: &str| {
        let image = dir.join("out.ember");
        let output = ember(&[
            "quantize",
            model.to_str().unwrap(),
            "-o",
            image.to_str().unwrap(),
            "--quiet",
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{model:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{model:?}: expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("out."))
            .collect();
        assert!(left.is_empty(), "{model:?} left {left:?}");
    };
    for (kind, expected) in [
        ("wrong-shard", "but the index puts it in"),
        ("index-missing", "which does not hold it"),
        ("duplicate", "is in both"),
        ("unindexed", "but not in the index"),
        ("shape", "but config.json makes it"),
        ("offsets", "not a valid safetensors file"),
    ] {
        let model = hf_dir(&gguf, &dir.join(kind), &["--shards", "2", "--break", kind]);
        fails(&model, expected);
    }

    let model = hf_dir(&gguf, &dir.join("whole"), &[]);
    let copy = |name: &str| {
        let to = dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&model).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        to
    };
    let no_tokenizer = copy("no-tokenizer");
    std::fs::remove_file(no_tokenizer.join("tokenizer.json")).unwrap();
    fails(&no_tokenizer, "no tokenizer.json");

    let no_weights = copy("no-weights");
    std::fs::remove_file(no_weights.join("model.safetensors")).unwrap();
    fails(&no_weights, "no model.safetensors");

    let no_config = copy("no-config");
    std::fs::remove_file(no_config.join("config.json")).unwrap();
    fails(&no_config, "no config.json");

    let edit = |name: &str, file: &str, from: &str, to: &str| {
        let model = copy(name);
        let path = model.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} lacks {from}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        model
    };
    fails(
        &edit(
            "mixtral",
            "config.json",
            "\"model_type\": \"llama\"",
            "\"model_type\": \"mixtral\"",
        ),
        "unsupported model: architecture \"mixtral\"",
    );
    fails(
        &edit(
            "unigram",
            "tokenizer.json",
            "\"type\": \"BPE\"",
            "\"type\": \"Unigram\"",
        ),
        "the tokenizer model Unigram",
    );
    fails(
        &edit(
            "rope-scaling",
            "config.json",
            "\"rope_scaling\": null",
            "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}",
        ),
        "RoPE scaling \"yarn\"",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
