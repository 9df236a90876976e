//! `emberd`'s command line: help that explains itself and clear errors before any model loads.
//! (Serving is tested end to end in `tests/serial.rs`.)

use std::process::Command;

fn emberd(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_emberd"))
        .args(args)
        .output()
        .expect("emberd runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_explains_both_ways_to_connect() {
    let (ok, stdout, _) = emberd(&["--help"]);
    assert!(ok);
    for expected in [
        "--port",
        "--baud",
        "--pty",
        "--model",
        "picocom",
        "PROTOCOL.md",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from --help:\n{stdout}"
        );
    }
}

#[test]
fn a_port_or_a_pty_is_required_not_both() {
    let (ok, _, stderr) = emberd(&["--model", "m.ember"]);
    assert!(!ok);
    assert!(stderr.contains("--port"), "{stderr}");
    let (ok, _, stderr) = emberd(&["--model", "m.ember", "--pty", "--port", "/dev/null"]);
    assert!(!ok);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn a_missing_model_is_named() {
    let dir = std::env::temp_dir().join(format!("emberd-cli-{}", std::process::id()));
    let missing = dir.join("missing.ember");
    let (ok, _, stderr) = emberd(&["--model", missing.to_str().unwrap(), "--pty"]);
    assert!(!ok);
    assert!(stderr.contains("cannot load model"), "{stderr}");
    assert!(stderr.contains("missing.ember"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
