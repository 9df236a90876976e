//! The ARM builds, run under qemu-user: the cross-compiled `ember` writes the same tiny model as
//! on x86 and generates llama.cpp's golden tokens with both engines; the cross-compiled `emberd`
//! picks each board's kernels on that board's emulated CPU, chats over a PTY with the x86 host
//! tool, and `ember package` bundles it into a tarball whose binary runs.
//!
//! Needs the cross builds first: for each target T in `EMBER_CROSS_TARGETS` (comma-separated),
//! `cargo build --profile dist --target T -p emberd -p ember-tools` (see `scripts/install-cross.sh`
//! and `.ci/run`). Without `EMBER_CROSS_TARGETS` these tests say so and pass, unless
//! `EMBER_REQUIRE_CROSS=1` (CI), which makes a missing build a failure.

use ember_board::Board;
use ember_e2e::{
    Running, assert_greedy_matches_golden, binary, dry_run_field, ember, ember_at, fresh_temp_dir,
    golden_chat_reply, last_json_line, repo_root, serve_on_pty, stdout_of, tiny_golden, tiny_image,
    unpack,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One cross target: where its binaries are and how qemu runs them.
struct Cross {
    target: String,
    /// `target/<triple>/dist` (the profile `ember package` ships).
    dir: PathBuf,
    /// The runner from `.cargo/config.toml`, e.g. `qemu-aarch64-static -L /usr/aarch64-linux-gnu`.
    runner: Vec<String>,
}

impl Cross {
    /// `binary` (a name in this target's release directory, or an absolute path) under qemu, emulating
    /// `cpu` when given.
    fn command(&self, binary: impl AsRef<Path>, cpu: Option<&str>) -> Command {
        let mut command = Command::new(&self.runner[0]);
        command.args(&self.runner[1..]);
        if let Some(cpu) = cpu {
            command.args(["-cpu", cpu]);
        }
        command.arg(self.dir.join(binary));
        command
    }

    fn run(&self, binary: &str, args: &[&str]) -> Output {
        self.command(binary, None)
            .args(args)
            .output()
            .expect("qemu runs")
    }

    fn boards(&self) -> Vec<Board> {
        Board::all()
            .unwrap()
            .into_iter()
            .filter(|b| b.target == self.target)
            .collect()
    }
}

/// The targets CI built, with their runners; empty (after saying so) when none are configured.
fn cross_targets() -> Vec<Cross> {
    let required = std::env::var("EMBER_REQUIRE_CROSS").as_deref() == Ok("1");
    let list = std::env::var("EMBER_CROSS_TARGETS").unwrap_or_default();
    if list.trim().is_empty() {
        assert!(
            !required,
            "EMBER_REQUIRE_CROSS=1 but EMBER_CROSS_TARGETS is empty"
        );
        eprintln!("EMBER_CROSS_TARGETS is not set: the cross builds are not tested here");
        return Vec::new();
    }
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo_root().join(".cargo/config.toml")).unwrap())
            .unwrap();
    // target/release/deps/<test> → target/
    let target_dir = binary("ember")
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|target| {
            let runner = config["target"][target]["runner"]
                .as_str()
                .unwrap_or_else(|| panic!("no runner for {target} in .cargo/config.toml"));
            let dir = target_dir.join(target).join("dist");
            for name in ["ember", "emberd"] {
                assert!(
                    dir.join(name).exists(),
                    "{} is missing: cargo build --profile dist --target {target} -p emberd -p ember-tools",
                    dir.join(name).display()
                );
            }
            Cross {
                target: target.to_string(),
                dir,
                runner: runner.split_whitespace().map(str::to_string).collect(),
            }
        })
        .collect()
}

#[test]
fn the_cross_built_ember_writes_the_tiny_model_and_generates_the_golden_tokens() {
    for cross in cross_targets() {
        let dir = fresh_temp_dir(&format!("cross-{}", cross.target));
        let gguf = dir.join("tiny.gguf");
        let image = dir.join("tiny.ember");
        stdout_of(&cross.run(
            "ember",
            &["synth", "-o", gguf.to_str().unwrap(), "--seed", "42"],
        ));
        assert_eq!(
            ember_models::fetch::sha256_file(&gguf).unwrap(),
            tiny_golden()["model_sha256"].as_str().unwrap(),
            "{}: ember synth wrote another model than on x86",
            cross.target
        );
        stdout_of(&cross.run(
            "ember",
            &[
                "quantize",
                gguf.to_str().unwrap(),
                "-o",
                image.to_str().unwrap(),
                "--no-report",
                "--quiet",
            ],
        ));
        // The same image bytes as the x86 quantizer wrote.
        assert_eq!(
            std::fs::read(&image).unwrap(),
            std::fs::read(tiny_image().0).unwrap(),
            "{}",
            cross.target
        );
        eprintln!("{}: f32 reference engine", cross.target);
        assert_greedy_matches_golden(|args| cross.run("ember", args), &gguf);
        eprintln!("{}: int8 engine (tract)", cross.target);
        assert_greedy_matches_golden(|args| cross.run("ember", args), &image);
    }
}

/// What each board's dry run must report on its emulated CPU. Written from the boards' data
/// sheets (Cortex-A76 has the dot-product extension, A72 and A53 do not; every armv7 Pi has
/// NEON), not from Ember's code: (board, int8 kernel, an ISA tract must list, the core tract
/// tunes for).
const EXPECTED_KERNELS: &[(&str, &str, &str, Option<&str>)] = &[
    ("rpi5", "neon-sdot", "dotprod", Some("Generic")),
    ("rpi4", "neon", "aarch64", Some("CortexA72")),
    ("rpi-zero-2w", "neon", "aarch64", Some("CortexA53")),
    ("rpi3-armv7", "neon-armv7", "neon", None),
];

#[test]
fn each_board_gets_its_kernels_on_its_emulated_cpu() {
    let image = tiny_image().0;
    for cross in cross_targets() {
        for board in cross.boards() {
            let cpu = board.qemu_cpu.as_deref();
            let output = cross
                .command("emberd", cpu)
                .args(["--board", &board.name, "--model", image.to_str().unwrap()])
                .arg("--dry-run")
                .output()
                .unwrap();
            let stdout = stdout_of(&output);
            eprintln!("{} on qemu -cpu {cpu:?}:\n{stdout}", board.name);
            let field = |name: &str| dry_run_field(&stdout, name);
            let (_, int8, isa, tuned) = EXPECTED_KERNELS
                .iter()
                .find(|(name, ..)| *name == board.name)
                .unwrap_or_else(|| panic!("no expected kernels for board {}", board.name));
            assert_eq!(field("int8").as_deref(), Some(*int8), "{}", board.name);
            let tract = field("tract").unwrap();
            assert!(
                tract.split(',').any(|i| i == *isa),
                "{}: {tract}",
                board.name
            );
            if *int8 != "neon-sdot" {
                assert!(!tract.contains("dotprod"), "{}: {tract}", board.name);
            }
            assert_eq!(field("tuned").as_deref(), *tuned, "{}", board.name);
            let threads = board.threads.unwrap().to_string();
            assert_eq!(field("threads"), Some(threads), "{}", board.name);
        }
    }
}

#[test]
fn the_cross_built_emberd_chats_with_the_x86_host_tool() {
    let image = tiny_image().0;
    for cross in cross_targets() {
        let board = &cross.boards()[0];
        let mut command = cross.command("emberd", board.qemu_cpu.as_deref());
        command.args([
            "--board",
            &board.name,
            "--model",
            image.to_str().unwrap(),
            "--pty",
            "--threads",
            "2",
        ]);
        let (_emberd, port): (Running, PathBuf) = serve_on_pty(command);
        let output = ember_at(&port, &["ask", "Hi there!", "-n", "32", "--json"], "");
        let result = last_json_line(&stdout_of(&output));
        assert_eq!(
            result["text"],
            golden_chat_reply("Hi there!"),
            "{} ({})",
            cross.target,
            board.name
        );
    }
}

#[test]
fn a_package_for_each_arm_board_holds_an_emberd_that_runs_there() {
    let image = tiny_image().0;
    for cross in cross_targets() {
        let board = &cross.boards()[0];
        let dir = fresh_temp_dir(&format!("cross-package-{}", board.name));
        let tarball = dir.join("ember.tar.gz");
        stdout_of(&ember(&[
            "package",
            "--board",
            &board.name,
            "--emberd",
            cross.dir.join("emberd").to_str().unwrap(),
            "--model",
            image.to_str().unwrap(),
            "-o",
            tarball.to_str().unwrap(),
            "--quiet",
        ]));
        unpack(&tarball, &dir);
        let root = dir.join(format!("ember-{}", board.name));
        // The ELF header's e_machine: 0xb7 AArch64, 0x28 ARM (the ELF specification).
        let binary = std::fs::read(root.join("bin/emberd")).unwrap();
        let machine = u16::from_le_bytes([binary[18], binary[19]]);
        let expected = if cross.target.starts_with("aarch64") {
            0xb7
        } else {
            0x28
        };
        assert_eq!(machine, expected, "{}", board.name);
        // It runs on the board's emulated CPU with the unpacked profile and model.
        let output = cross
            .command(root.join("bin/emberd"), board.qemu_cpu.as_deref())
            .arg("--board")
            .arg(root.join("board.toml"))
            .arg("--model")
            .arg(root.join("model.ember"))
            .arg("--dry-run")
            .output()
            .unwrap();
        let stdout = stdout_of(&output);
        assert!(
            stdout.contains(&format!("board    {}", board.name)),
            "{stdout}"
        );
    }
}
