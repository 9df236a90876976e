//! The protocol conformance suite (`tests/conformance/`, Python 3 standard library only),
//! written from `docs/PROTOCOL.md` as a stranger would, run against the real `emberd` on the
//! tiny synthetic model. By hand:
//!
//! ```sh
//! cargo build --release -p emberd -p ember-tools
//! python3 -m unittest discover -s tests/conformance -v     # makes the tiny image with ember
//! ```

use ember_e2e::{binary, repo_root, tiny_image};
use std::process::Command;

#[test]
fn protocol_conformance() {
    let python = std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = repo_root().join("tests/conformance");
    let output = Command::new(&python)
        .args(["-m", "unittest", "discover", "-s"])
        .arg(&dir)
        .args(["-t"])
        .arg(&dir)
        .arg("-v")
        .current_dir(&dir)
        .env("EMBERD", binary("emberd"))
        .env("EMBER", binary("ember"))
        .env("EMBER_TINY_IMAGE", tiny_image().0)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{python} runs: {e}"));
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the conformance suite failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        report
    );
    eprintln!("{}", report.lines().last().unwrap_or_default());
}
