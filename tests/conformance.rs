//! The protocol conformance suite (`tests/conformance/`, Python 3 standard library only),
//! written from `docs/PROTOCOL.md` as a stranger would, run against the real `emberd` on the
//! tiny synthetic model: each case starts its own `emberd --pty`, several at once
//! (`tests/conformance/run.py`). By hand:
//!
//! ```sh
//! cargo build --release -p emberd -p ember-tools
//! python3 tests/conformance/run.py -v          # makes the tiny image with target/release/ember
//! python3 tests/conformance/run.py Stalled     # the cases whose name holds "Stalled"
//! ```

use ember_e2e::{binary, repo_root, tiny_image};
use std::process::Command;

#[test]
fn protocol_conformance() {
    let python = std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .arg(repo_root().join("tests/conformance/run.py"))
        .arg("-v")
        .env("EMBERD", binary("emberd"))
        .env("EMBER", binary("ember"))
        .env("EMBER_TINY_IMAGE", tiny_image().0)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{python} runs: {e}"));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the conformance suite failed ({}):\n{}{}",
        output.status,
        report,
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}", report.lines().last().unwrap_or_default());
}
