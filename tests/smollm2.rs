//! SmolLM2-135M-Instruct through Ember's tokenizer, its f32 reference engine and its int8 engine
//! (the quantized image through tract), checked against llama.cpp's answers on the same GGUF
//! file, recorded in `models/smollm2-135m/reference/` (see the README there for how they were
//! made), and against onnxruntime on the exported graph. Fetches the model on first use.

use ember_core::sampler::argmax;
use ember_e2e::{
    binary, ember, ember_at, emberd_on_pty, k_quant_dir, last_json_line, serve_on_pty, smollm2,
    smollm2_image, smollm2_k_quant, smollm2_reference, stdout_of,
};
use ember_engine::LanguageModel;
use ember_gguf::GgufFile;
use ember_reference::{ReferenceModel, ReferenceSession, gguf};
use sha2::{Digest, Sha256};

fn ids(value: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).expect("a list of token ids")
}

#[test]
fn tokenizer_ids_match_llama_cpp() {
    let file = GgufFile::open(smollm2()).unwrap();
    let tokenizer = gguf::tokenizer(file.metadata()).unwrap();
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

/// Log-softmax of `logits` at `id`.
fn logprob(logits: &[f32], id: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[id as usize] as f64 - max - sum.ln()
}

/// Each case of a recorded chat reference with Ember's greedy `--chat` reply to its prompt,
/// made by the real binary from `model` (the GGUF: f32 reference; an image: int8 engine), once
/// per model, prompt and test process.
fn ember_replies(
    reference: &serde_json::Value,
    model: &std::path::Path,
) -> Vec<(serde_json::Value, serde_json::Value)> {
    static REPLIES: std::sync::Mutex<Vec<(String, serde_json::Value)>> =
        std::sync::Mutex::new(Vec::new());
    let max_tokens = reference["max_tokens"].to_string();
    let cases = reference["cases"].as_array().unwrap();
    cases
        .iter()
        .map(|case| {
            let prompt = case["prompt"].as_str().unwrap();
            let key = format!("{}:{max_tokens}:{prompt}", model.display());
            let mut replies = REPLIES.lock().unwrap();
            if let Some((_, reply)) = replies.iter().find(|(k, _)| *k == key) {
                return (case.clone(), reply.clone());
            }
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
            let reply = last_json_line(&stdout_of(&output));
            replies.push((key, reply.clone()));
            (case.clone(), reply)
        })
        .collect()
}

/// Exact agreement with llama.cpp computing in f32 on the same weights (a lossless F32 copy of
/// the GGUF, F32 KV cache): the same arithmetic as Ember's reference engine.
#[test]
fn greedy_chat_replies_match_llama_cpp_exact() {
    assert_replies_match(&smollm2_reference("chat_replies_exact.json"), &smollm2());
}

/// The same on the K-quant files people download: SmolLM2 quantized by llama.cpp's kernels
/// (`models/ggml_quantize.py`) to Q4_K_M, Q5_K_M, Q6_K and Q5_0, each run by Ember's f32
/// reference, against llama.cpp on a lossless F32 copy of that file (recorded in
/// `models/smollm2-135m/reference/kquants/`). Two f32 computations that add in different
/// orders can still part where llama.cpp's two best tokens are closer than [`FLOAT_TIE`]
/// (one reply of the 24 does, at a gap of 0.0007 nats): there Ember must have chosen
/// llama.cpp's second, and the replies must agree up to that step.
#[test]
fn k_quant_files_give_llama_cpp_f32_replies() {
    let mut parted = Vec::new();
    for kind in ["q4_k_m", "q5_k_m", "q6_k", "q5_0"] {
        let Some(file) = smollm2_k_quant(kind) else {
            return;
        };
        let reference = smollm2_reference(&format!("kquants/{kind}/chat_replies_exact.json"));
        let digest = format!("{:x}", Sha256::digest(std::fs::read(&file).unwrap()));
        assert_eq!(
            digest, reference["gguf_sha256"],
            "models/ggml_quantize.py wrote another {kind} file than the one llama.cpp ran: \
             regenerate its reference (models/smollm2-135m/reference/README.md)"
        );
        eprintln!("{kind}: {}", file.display());
        for (case, result) in &ember_replies(&reference, &file) {
            let prompt = case["prompt"].as_str().unwrap();
            let (ours, theirs) = (ids(&result["tokens"]), ids(&case["reply_ids"]));
            let Some(step) = ours.iter().zip(&theirs).position(|(a, b)| a != b) else {
                assert_eq!(ours, theirs, "{kind} {prompt:?}");
                continue;
            };
            let top5: Vec<(u32, f64)> = serde_json::from_value(case["top5"][step].clone()).unwrap();
            let gap = top5[0].1 - top5[1].1;
            eprintln!("{kind} {prompt:?}: parts from llama.cpp at step {step}, gap {gap}");
            assert!(
                top5[1].0 == ours[step] && gap < FLOAT_TIE,
                "{kind} {prompt:?} step {step}: Ember chose {}, llama.cpp's top 5 were {top5:?}",
                ours[step]
            );
            parted.push((kind, step));
        }
    }
    eprintln!("replies that part at a float tie: {parted:?}");
    let _ = std::fs::remove_dir_all(k_quant_dir());
}

/// Log-probability gap (nats) below which two f32 computations of the same model that add in
/// different orders may rank the two best tokens differently.
const FLOAT_TIE: f64 = 0.002;

/// Ember's greedy `--chat` replies from `model` are the reference's, token for token.
fn assert_replies_match(reference: &serde_json::Value, model: &std::path::Path) {
    for (case, result) in &ember_replies(reference, model) {
        let prompt = case["prompt"].as_str().unwrap();
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

/// llama.cpp run natively on the Q4_1 file rounds activations to 8 bits before each matrix
/// product, which moves log-probabilities by ~0.1 (see the reference README), so greedy paths
/// part where its top candidates are close. Where Ember's reply first differs, Ember's token
/// must be among llama.cpp's top 5 and within 0.5 nats of its top-1. Returns the number of
/// tokens each reply shares with llama.cpp's before they part.
fn follows_llama_cpp_native(model: &std::path::Path) -> Vec<usize> {
    let replies = ember_replies(&smollm2_reference("chat_replies.json"), model);
    let mut shared = Vec::new();
    let mut identical = 0;
    for (case, result) in &replies {
        let prompt = case["prompt"].as_str().unwrap();
        let ours = ids(&result["tokens"]);
        let theirs = ids(&case["reply_ids"]);
        let Some(step) = ours.iter().zip(&theirs).position(|(a, b)| a != b) else {
            identical += 1;
            shared.push(ours.len().min(theirs.len()));
            continue;
        };
        shared.push(step);
        let top5: Vec<(u32, f64)> = serde_json::from_value(case["top5"][step].clone()).unwrap();
        let ember_choice = top5.iter().find(|(id, _)| *id == ours[step]);
        let gap = ember_choice.map(|(_, lp)| top5[0].1 - lp);
        eprintln!("{prompt:?}: first differs from llama.cpp (native) at step {step}, gap {gap:?}");
        assert!(
            gap.is_some_and(|g| g < 0.5),
            "{prompt:?} step {step}: Ember chose {} but llama.cpp's top 5 were {top5:?}",
            ours[step]
        );
    }
    eprintln!(
        "{}: {identical}/{} replies identical to llama.cpp (native); tokens shared {shared:?}",
        model.display(),
        replies.len()
    );
    shared
}

/// Chatting with SmolLM2 on `emberd` over a PTY (`ember ask --port`, frame mode) gives the same
/// replies as `ember generate --chat` on the image — replies checked against llama.cpp by
/// `int8_greedy_chat_replies_follow_llama_cpp_native_up_to_near_ties`.
/// Without --model, `ember generate` runs the default model: SmolLM2's image, made in
/// `$EMBER_HOME` on first use — the same image `ember quantize` makes from the fetched GGUF —
/// and `emberd` then serves that image, giving the same reply over a serial line.
#[test]
fn the_default_model_is_smollm2s_image() {
    let prompt =
        "What is the capital of France? Answer in one sentence, then give one fun fact about it.";
    let local = last_json_line(&stdout_of(&ember(&[
        "generate", "--chat", "--prompt", prompt, "-n", "48", "--json",
    ])));
    let recipe = ember_recipes::recipe("smollm2-135m").unwrap();
    let default = ember_models::default::image_path(&recipe);
    assert!(default.is_file(), "{} was not made", default.display());
    let inspect = |image: &std::path::Path| {
        let inspect = stdout_of(&ember(&["inspect", image.to_str().unwrap(), "--json"]));
        serde_json::from_str::<serde_json::Value>(&inspect).unwrap()
    };
    let (default, made) = (inspect(&default), inspect(&smollm2_image().0));
    assert_eq!(default["sections"], made["sections"]);
    assert_eq!(default["manifest_sha256"], made["manifest_sha256"]);

    let mut emberd = std::process::Command::new(binary("emberd"));
    emberd.args(["--pty", "--max-tokens", "48"]);
    let (_emberd, port) = serve_on_pty(emberd);
    let output = ember_at(&port, &["ask", "--json", prompt], "");
    let remote = last_json_line(&stdout_of(&output));
    assert_eq!(remote["text"], local["text"]);
    assert!(local["text"].as_str().unwrap().contains("Paris"), "{local}");
}

/// Ctrl-C during a reply of `ember chat --model` stops that reply (finish "cancelled") and the
/// conversation goes on.
#[test]
fn ctrl_c_stops_a_local_chat_reply() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let image = smollm2_image().0;
    let mut chat = Command::new(binary("ember"))
        .args([
            "chat",
            "--model",
            image.to_str().unwrap(),
            "--json",
            "-n",
            "200",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    let mut stdout = chat.stdout.take().unwrap();
    stdin
        .write_all(b"Tell me a long story about a dragon who learns to bake bread.\n")
        .unwrap();
    // The reply has begun once its first bytes arrive.
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    let status = Command::new("kill")
        .args(["-INT", &chat.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    stdin.write_all(b"Thank you.\n/quit\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(chat.wait().unwrap().success(), "{rest}");
    let replies: Vec<serde_json::Value> = rest
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), 2, "{rest}");
    assert_eq!(replies[0]["finish"], "cancelled", "{rest}");
    assert!(replies[0]["stats"]["generated_tokens"].as_u64().unwrap() < 200);
    assert_ne!(replies[1]["finish"], "cancelled", "{rest}");
}

#[test]
fn chat_with_smollm2_over_a_serial_line() {
    let image = smollm2_image().0;
    let reference = smollm2_reference("chat_replies.json");
    let max_tokens = reference["max_tokens"].to_string();
    let (_emberd, port) = emberd_on_pty(&image, &["--max-tokens", &max_tokens]);
    for (case, local) in ember_replies(&reference, &image) {
        let prompt = case["prompt"].as_str().unwrap();
        let output = ember_at(&port, &["ask", "--json", "--sentences", prompt], "");
        let remote = last_json_line(&stdout_of(&output));
        assert_eq!(remote["text"], local["text"], "reply to {prompt:?}");
        assert_eq!(remote["finish"], local["finish"], "finish of {prompt:?}");
        assert_eq!(
            remote["stats"]["prompt_tokens"],
            local["stats"]["prompt_tokens"]
        );
        let sentences: Vec<String> = serde_json::from_value(remote["sentences"].clone()).unwrap();
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            squash(&sentences.join(" ")),
            squash(local["text"].as_str().unwrap()),
            "sentences of {prompt:?}"
        );
    }
}

/// `ember bench --port` against SmolLM2 behind a PTY: every measurement is there, and each
/// cancel it sends during the long prompt's prefill ended the reply before its first token (the
/// bench fails when a token comes first). How fast is the benchmark's to say (README), not this
/// test's.
#[test]
fn bench_over_a_serial_line_cancels_during_the_prefill() {
    let image = smollm2_image().0;
    let (_emberd, port) = emberd_on_pty(&image, &["--threads", "2"]);
    let output = ember_at(&port, &["bench", "--json", "--runs", "2"], "");
    let report = last_json_line(&stdout_of(&output));
    assert!(
        report["long_prompt_tokens"].as_u64().unwrap() > 300,
        "{report}"
    );
    let samples = report["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "{report}");
    for sample in samples {
        let sample: Vec<f64> = serde_json::from_value(sample.clone()).unwrap();
        assert!(sample.iter().all(|&ms| ms > 0.0), "{report}");
    }
    // The device answers as usual afterwards (its system prompt is the default again).
    let after = ember_at(&port, &["ask", "--json", "What is 2 + 2?"], "");
    assert_ne!(last_json_line(&stdout_of(&after))["finish"], "error");
}

#[test]
fn greedy_chat_replies_follow_llama_cpp_native_up_to_near_ties() {
    follows_llama_cpp_native(&smollm2());
}

/// The int8 engine meets the same bar as the f32 reference against llama.cpp's replies (which
/// are themselves computed with 8-bit activations): every parting is at a near-tie. In total its
/// replies share at least half as many tokens with llama.cpp's as the reference's do (measured
/// when written: 33 and 51 — one early near-tie in a long reply decides most of the difference).
#[test]
fn int8_greedy_chat_replies_follow_llama_cpp_native_up_to_near_ties() {
    let int8: usize = follows_llama_cpp_native(&smollm2_image().0).iter().sum();
    let reference: usize = follows_llama_cpp_native(&smollm2()).iter().sum();
    eprintln!("tokens shared with llama.cpp: int8 {int8}, f32 reference {reference}");
    assert!(
        int8 * 2 >= reference,
        "int8 {int8} vs reference {reference}"
    );
}

/// Ember's logits after each token of the teacher-forced text (all references use the same ids,
/// so they are computed once per test process).
fn reference_logits(text_ids: &[u32]) -> Vec<Vec<f32>> {
    /// The ids of the text and the logits after each of them.
    type Cached = Option<(Vec<u32>, Vec<Vec<f32>>)>;
    static LOGITS: std::sync::Mutex<Cached> = std::sync::Mutex::new(None);
    let mut cached = LOGITS.lock().unwrap();
    if let Some((cached_ids, logits)) = cached.as_ref()
        && cached_ids == text_ids
    {
        return logits.clone();
    }
    let file = GgufFile::open(smollm2()).unwrap();
    let model = ReferenceModel::load(&file).unwrap();
    let mut session = ReferenceSession::new(&model, text_ids.len());
    let logits = session.logits_at_each(text_ids).unwrap();
    *cached = Some((text_ids.to_vec(), logits.clone()));
    logits
}

/// Teacher-forced comparison against a reference's top-1 and top-5 log-probabilities:
/// (share of positions with the same top-1, largest log-probability difference).
fn teacher_forced(reference_name: &str, reference: &serde_json::Value) -> (f64, f64) {
    let text_ids = ids(&reference["ids"]);
    compare_teacher_forced(reference_name, reference, &reference_logits(&text_ids))
}

/// Compares `logits` (after each token of the reference's text) with the reference's top-1 and
/// top-5 log-probabilities.
fn compare_teacher_forced(
    reference_name: &str,
    reference: &serde_json::Value,
    logits: &[Vec<f32>],
) -> (f64, f64) {
    let text_ids = ids(&reference["ids"]);
    let llama_top1 = ids(&reference["top1"]);
    let llama_top5: Vec<Vec<(u32, f64)>> =
        serde_json::from_value(reference["top5"].clone()).unwrap();
    assert!(text_ids.len() >= 150 && llama_top1.len() == text_ids.len());
    let agree = logits
        .iter()
        .zip(&llama_top1)
        .filter(|(l, want)| argmax(l) == **want)
        .count();
    let max_logprob_error = logits
        .iter()
        .zip(&llama_top5)
        .flat_map(|(l, top)| top.iter().map(move |(id, lp)| (logprob(l, *id) - lp).abs()))
        .fold(0.0, f64::max);
    let share = agree as f64 / llama_top1.len() as f64;
    eprintln!(
        "{reference_name}: top-1 agreement {agree}/{} = {:.1}%, largest top-5 log-prob difference {max_logprob_error:.4}",
        llama_top1.len(),
        share * 100.0
    );
    (share, max_logprob_error)
}

#[test]
fn teacher_forced_top1_agrees_with_llama_cpp_exact() {
    let name = "teacher_forced_exact.json";
    let (share, error) = teacher_forced(name, &smollm2_reference(name));
    assert!(share >= 0.98, "agreement {share:.3} below 0.98");
    // llama.cpp's own f32 path differs from float64 numpy by 0.018 at most on this text.
    assert!(error < 0.05, "log-probabilities differ by {error}");
}

/// The float64 numpy forward pass (`numpy_forward.py`, an independent transcription) is the
/// exact-math oracle: Ember's f32 log-probabilities must sit within 1e-3 of it.
#[test]
fn teacher_forced_logprobs_match_float64_numpy() {
    let numpy = smollm2_reference("numpy_reference.json");
    let (share, error) = teacher_forced("numpy_reference.json", &numpy["teacher_forced"]);
    assert_eq!(share, 1.0, "top-1 differs from float64 numpy");
    assert!(error < 1e-3, "log-probabilities differ by {error}");
}

#[test]
fn teacher_forced_top1_mostly_agrees_with_llama_cpp_native() {
    // llama.cpp's 8-bit activation rounding flips 4 of 182 predictions (float64 numpy, which
    // does not round, disagrees with it at the same 4 positions).
    let name = "teacher_forced.json";
    let (share, error) = teacher_forced(name, &smollm2_reference(name));
    assert!(share >= 0.95, "agreement {share:.3} below 0.95");
    assert!(error < 0.7, "log-probabilities differ by {error}");
}

/// `ember quantize` reports the int8 engine's agreement with the f32 reference on its built-in
/// text (88 positions); SmolLM2's Q4_1 blocks are re-quantized to int8 and its activations are
/// rounded to 8 bits, which moves near-ties only.
#[test]
fn int8_quality_report() {
    let (_, report) = smollm2_image();
    eprintln!("{report}");
    let (top1, kl, _) = ember_e2e::quality_numbers(&report);
    assert!(top1 >= 0.95, "{report}");
    assert!(kl < 0.02, "{report}");
}

/// The int8 engine's logits after each token of the teacher-forced text.
fn int8_logits(text_ids: &[u32]) -> Vec<Vec<f32>> {
    image_logits(&smollm2_image().0, text_ids)
}

/// Ember's engine's logits on `image` after each token of the teacher-forced text.
fn image_logits(image: &std::path::Path, text_ids: &[u32]) -> Vec<Vec<f32>> {
    let image = ember_image::Image::open(image).unwrap();
    let model = ember_tract::TractModel::load(&image, 2).unwrap();
    let mut session = model.session(text_ids.len()).unwrap();
    session.logits_at_each(text_ids).unwrap()
}

/// Teacher-forced over the 182-token text, the int8 engine agrees with llama.cpp (native, 8-bit
/// activations like Ember's int8 engine) on ≥ 93% of top-1 choices, and every choice where they
/// part is a near-tie for llama.cpp itself: Ember's token is among llama.cpp's top 5, less than
/// 0.5 nats below llama.cpp's top-1. (Measured: 171/182, the largest such gap 0.37 nats; with
/// tract's own attention before the in-place cache, 173/182. int8 activation rounding moves
/// logits by up to ~0.5, so which near-ties flip changes with any change of arithmetic order.)
#[test]
fn int8_teacher_forced_top1_agrees_with_llama_cpp_native() {
    let reference = smollm2_reference("teacher_forced.json");
    let text_ids = ids(&reference["ids"]);
    let logits = int8_logits(&text_ids);
    agrees_with_llama_cpp_native_up_to_near_ties("int8 vs native", &reference, &logits);
}

/// ≥ 93% of top-1 choices agree with llama.cpp's (native), and at every other position Ember's
/// token is among llama.cpp's top 5, less than 0.5 nats below its top-1.
fn agrees_with_llama_cpp_native_up_to_near_ties(
    name: &str,
    reference: &serde_json::Value,
    logits: &[Vec<f32>],
) {
    let (share, error) = compare_teacher_forced(name, reference, logits);
    assert!(share >= 0.93, "agreement {share:.3} below 0.93");
    assert!(error < 1.0, "log-probabilities differ by {error}");
    let top1 = ids(&reference["top1"]);
    let top5: Vec<Vec<(u32, f64)>> = serde_json::from_value(reference["top5"].clone()).unwrap();
    for (position, (logits, want)) in logits.iter().zip(&top1).enumerate() {
        let got = argmax(logits);
        if got == *want {
            continue;
        }
        let llama = |id: u32| {
            top5[position]
                .iter()
                .find(|(t, _)| *t == id)
                .map(|(_, lp)| *lp)
        };
        let gap = llama(*want).zip(llama(got)).map(|(best, ours)| best - ours);
        assert!(
            gap.is_some_and(|gap| gap < 0.5),
            "position {position}: Ember picks {got}, llama.cpp {want}; llama.cpp's own gap {gap:?}"
        );
    }
}

/// `--scheme q4` keeps SmolLM2's Q4_1 blocks exactly (the int8 image re-quantizes them) and
/// meets the int8 engine's bar against llama.cpp natively on the same file. (Measured when
/// written, engine revision 4: 178/182 top-1, the int8 image 171; with revision 3's attention
/// 175 and 174 — llama.cpp's f16 KV cache and the order of arithmetic decide which near-ties
/// flip.) Its quality report against the f32 reference is in the int8 range.
#[test]
fn q4_teacher_forced_top1_agrees_with_llama_cpp_native() {
    let (image, report) = ember_e2e::smollm2_q4_image();
    eprintln!("{report}");
    let (top1, kl, _) = ember_e2e::quality_numbers(&report);
    assert!(top1 >= 0.95 && kl < 0.02, "{report}");
    let reference = smollm2_reference("teacher_forced.json");
    let logits = image_logits(&image, &ids(&reference["ids"]));
    agrees_with_llama_cpp_native_up_to_near_ties("q4 vs native", &reference, &logits);
}

/// The weights stay in the page cache: after loading SmolLM2's image and answering one question
/// (16 tokens), the process's anonymous resident memory (tokenizer, tract's plan, KV cache) is
/// under a quarter of the weights section.
#[test]
fn int8_weights_are_memory_mapped_not_copied() {
    let (image, _) = smollm2_image();
    let weights = ember_image::Image::open(&image)
        .unwrap()
        .section(ember_image::WEIGHTS_SECTION)
        .unwrap()
        .length;
    let result = last_json_line(&stdout_of(&ember(&[
        "generate",
        "--model",
        image.to_str().unwrap(),
        "--chat",
        "--prompt",
        smollm2_reference("chat_replies.json")["cases"][0]["prompt"]
            .as_str()
            .unwrap(),
        "--max-tokens",
        "16",
        "--json",
    ])));
    assert!(
        result["text"].as_str().unwrap().contains("Paris"),
        "{result}"
    );
    let anon = result["stats"]["rss_anon_bytes"].as_u64().unwrap();
    let file = result["stats"]["rss_file_bytes"].as_u64().unwrap();
    eprintln!(
        "weights {weights} B, RssAnon {anon} B ({:.1}%), RssFile {file} B",
        100.0 * anon as f64 / weights as f64
    );
    assert!(
        anon * 4 < weights,
        "RssAnon {anon} is not under 25% of {weights}"
    );
    assert!(
        file > weights / 2,
        "the weights are not file-backed ({file})"
    );
}

/// onnxruntime runs the exported SmolLM2 graph and agrees with the f32 reference (it computes
/// with f32 activations over the same int8 weights) on ≥ 95% of teacher-forced top-1 choices.
#[test]
fn onnxruntime_runs_the_exported_smollm2_graph() {
    let reference = smollm2_reference("teacher_forced_exact.json");
    let text_ids = ids(&reference["ids"]);
    let Some(logits) = ember_e2e::onnxruntime_logits(&smollm2_image().0, &text_ids, 1) else {
        return;
    };
    let (share, _) = compare_teacher_forced("onnxruntime vs exact", &reference, &logits);
    assert!(share >= 0.95, "agreement {share:.3} below 0.95");
}
