//! The README as a newcomer meets it: the commands of its "Run it" section, read from README.md
//! itself (a README that drifts from the code fails here), run as written by `bash` with a fresh
//! `EMBER_HOME`, so the first download from PyPI and the first quantization happen as they do on
//! a fresh machine. Each chat is asked the README's question and must answer with "Paris".
//!
//! Lines that start with `cargo` run in the repository; the others in a scratch directory whose
//! `target` points at this build's, so the files they write (`smollm2.ember`) stay out of the
//! working tree. In a test binary of its own: cargo runs test binaries one after another,
//! so the builds these commands may do never replace a binary that another test is running.

use ember_e2e::{binary, fresh_temp_dir, repo_root};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The README's question; SmolLM2 answers it with Paris (llama.cpp agrees, see
/// models/smollm2-135m/reference).
const QUESTION: &str =
    "What is the capital of France? Answer in one sentence, then give one fun fact about it.";

/// Generous: a first `cargo run` may compile, and a first use downloads 93 MB.
const LIMIT: Duration = Duration::from_secs(1800);

/// The `sh` code blocks of the README section under `heading`, each as its command lines.
fn code_blocks(readme: &str, heading: &str) -> Vec<Vec<String>> {
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no section \"## {heading}\""));
    let section = &readme[start + 1..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 3)];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```sh" {
            let block = lines
                .by_ref()
                .take_while(|l| l.trim() != "```")
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            blocks.push(block);
        }
    }
    blocks
}

/// Runs `line` with `bash` in `dir`, `EMBER_HOME` = `home`, `stdin` as its input; kills it
/// after [`LIMIT`].
fn run(line: &str, dir: &Path, home: &Path, stdin: &str) -> Output {
    let start = Instant::now();
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", line])
        .current_dir(dir)
        .env("EMBER_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash starts");
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let pid = child.id();
    let (done, waited) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = match waited.recv_timeout(LIMIT) {
        Ok(output) => output.expect("bash runs"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("`{line}` did not finish within {LIMIT:?}");
        }
    };
    let _ = (writer.join(), waiter.join());
    eprintln!(
        "`{line}` in {}: {} in {:.1} s",
        dir.display(),
        output.status,
        start.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "`{line}` failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A scratch directory whose `target` is this build's target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = fresh_temp_dir(name);
    let target = binary("ember")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/ember")
        .to_path_buf();
    std::os::unix::fs::symlink(target, dir.join("target")).expect("symlink to target");
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_readme_runs_as_written_on_a_fresh_ember_home() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = code_blocks(&readme, "Run it");
    assert_eq!(
        blocks.len(),
        2,
        "\"Run it\" has the one command, then the steps: {blocks:?}"
    );
    let chat_input = format!("{QUESTION}\n/quit\n");

    // The one command to chat, on a fresh EMBER_HOME: it fetches and quantizes the default model.
    let [one_command] = blocks[0].as_slice() else {
        panic!(
            "the first block of \"Run it\" is one command: {:?}",
            blocks[0]
        );
    };
    assert!(one_command.starts_with("cargo "), "{one_command}");
    let home = fresh_temp_dir("readme-home-one-command");
    let output = run(one_command, &root, &home, &chat_input);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(
        stdout.contains("Paris"),
        "reply: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("first use of smollm2-135m"),
        "the default model was made on first use: {stderr}"
    );
    assert!(
        !stdout.contains("Collecting") && !stdout.contains("Downloading"),
        "pip's progress belongs on stderr: {stdout}"
    );
    // Once made, the image is reused.
    let again = run(one_command, &root, &home, &chat_input);
    assert!(text(&again.stdout).contains("Paris"));
    assert!(!text(&again.stderr).contains("first use"));

    // The same step by step, on another fresh EMBER_HOME: `$(ember fetch …)` must be the path
    // alone on the first download too.
    let home = fresh_temp_dir("readme-home-steps");
    let dir = scratch("readme-steps");
    let steps = &blocks[1];
    assert!(steps.len() >= 3, "build, fetch + quantize, chat: {steps:?}");
    for line in steps {
        let cwd = if line.starts_with("cargo ") {
            &root
        } else {
            &dir
        };
        let is_chat = line.contains(" chat");
        let output = run(line, cwd, &home, if is_chat { &chat_input } else { "" });
        if is_chat {
            let stdout = text(&output.stdout);
            assert!(stdout.contains("Paris"), "reply: {stdout}");
        }
    }

    // `ember fetch` on a first download prints exactly one line: the model's path.
    let home = fresh_temp_dir("readme-home-fetch");
    let output = run(
        "./target/release/ember fetch smollm2-135m",
        &scratch("readme-fetch"),
        &home,
        "",
    );
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "stdout: {stdout:?}");
    assert!(
        Path::new(stdout.trim()).starts_with(&home) && Path::new(stdout.trim()).is_file(),
        "{stdout}"
    );
    for name in [
        "readme-home-one-command",
        "readme-home-steps",
        "readme-steps",
        "readme-home-fetch",
        "readme-fetch",
    ] {
        let _ = std::fs::remove_dir_all(fresh_temp_dir(name));
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = code_blocks(&readme, "Test it");
    let [command] = blocks.first().map(Vec::as_slice).unwrap_or_default() else {
        panic!("\"Test it\" starts with one command: {blocks:?}");
    };
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == command),
        ".ci/run does not run the README's test command `{command}`"
    );
}
