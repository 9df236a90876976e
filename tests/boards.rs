//! Board profiles on this machine: `emberd --board` (serving, the memory budget, the dry run)
//! and `ember package` (a tarball that unpacks into a runnable emberd with its profile).

use ember_e2e::{
    Running, binary, dry_run_field, ember, ember_at, fresh_temp_dir, golden_chat_reply,
    last_json_line, repo_root, serve_on_pty, stdout_of, tiny_image, unpack,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn emberd(args: &[&str]) -> Output {
    Command::new(binary("emberd"))
        .args(args)
        .output()
        .expect("emberd runs")
}

fn failure(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The development board's profile with `memory_budget_mib` set to `budget`, as a file.
fn profile_with_budget(dir: &Path, budget: u64) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("boards/x86_64-pty.toml")).unwrap();
    let text = text
        .replace("name = \"x86_64-pty\"", "name = \"small\"")
        .replace(
            "memory_budget_mib = 2048",
            &format!("memory_budget_mib = {budget}"),
        );
    assert!(text.contains("name = \"small\"") && text.contains(&format!("= {budget}\n")));
    let path = dir.join("small.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `value` bytes as the error messages print them.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[test]
fn emberd_serves_the_golden_reply_with_the_development_board() {
    let image = tiny_image().0;
    let mut command = Command::new(binary("emberd"));
    command.args(["--board", "x86_64-pty", "--model", image.to_str().unwrap()]);
    let (_emberd, port): (Running, PathBuf) = serve_on_pty(command);
    let output = ember_at(&port, &["ask", "Hi there!", "-n", "32", "--json"], "");
    let result = last_json_line(&stdout_of(&output));
    assert_eq!(result["text"], golden_chat_reply("Hi there!"));
}

#[test]
fn a_model_over_the_boards_memory_budget_is_refused_naming_both_sizes() {
    let dir = fresh_temp_dir("boards-budget");
    let image = tiny_image().0;
    let image_bytes = std::fs::metadata(&image).unwrap().len();
    let profile = profile_with_budget(&dir, 1);
    let stderr = failure(&emberd(&[
        "--board",
        profile.to_str().unwrap(),
        "--model",
        image.to_str().unwrap(),
        "--pty",
    ]));
    assert!(stderr.contains("does not fit small"), "{stderr}");
    assert!(stderr.contains("memory budget of 1.0 MiB"), "{stderr}");
    assert!(
        stderr.contains(&format!("image {}", mib(image_bytes))),
        "{stderr}"
    );
    assert!(stderr.contains("use a smaller model"), "{stderr}");
}

#[test]
fn the_dry_run_prints_the_plan_without_serving() {
    let image = tiny_image().0;
    let image_bytes = std::fs::metadata(&image).unwrap().len();
    let output = emberd(&[
        "--board",
        "x86_64-pty",
        "--model",
        image.to_str().unwrap(),
        "--threads",
        "3",
        "--dry-run",
    ]);
    let stdout = stdout_of(&output);
    let field = |name: &str| {
        dry_run_field(&stdout, name).unwrap_or_else(|| panic!("no {name} in {stdout}"))
    };
    assert!(field("board").starts_with("x86_64-pty"), "{stdout}");
    assert_eq!(field("serial"), "a PTY pair at 115200 baud");
    // The tiny model's own context (ember synth) fits the development board's budget.
    assert_eq!(field("context"), "512 positions");
    assert_eq!(field("threads"), "3");
    assert!(
        field("memory").contains(&format!("image {}", mib(image_bytes))),
        "{stdout}"
    );
    assert!(
        field("memory").ends_with("of a 2048.0 MiB budget"),
        "{stdout}"
    );
    assert!(
        field("tract").split(',').any(|isa| isa == "x86_64"),
        "{stdout}"
    );
    let int8 = field("int8");
    assert!(
        ["avx512-vnni", "avx-vnni", "avx2", "portable"].contains(&int8.as_str()),
        "{int8}"
    );
}

#[test]
fn bad_board_arguments_get_clear_errors() {
    let dir = fresh_temp_dir("boards-bad");
    let image = tiny_image().0;
    let image = image.to_str().unwrap();
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "name = \"broken\"\nthreads = \"many\"\n").unwrap();
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec!["--board", "rpi6", "--model", image],
            "unknown board \"rpi6\"",
        ),
        (
            vec!["--board", broken.to_str().unwrap(), "--model", image],
            "is malformed",
        ),
        (
            vec!["--board", "/nonexistent/board.toml", "--model", image],
            "cannot read board profile /nonexistent/board.toml",
        ),
        // Without --model the board's slot directory holds the model; none is installed here.
        (
            vec!["--board", "x86_64-pty", "--dry-run"],
            "cannot use the slot directory /var/lib/ember",
        ),
    ];
    for (args, message) in cases {
        let stderr = failure(&emberd(&args));
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// Lists a tarball's entries with the system's `tar` (not Ember's code).
fn tar_listing(tarball: &Path) -> Vec<String> {
    let output = Command::new("tar")
        .arg("-tzvf")
        .arg(tarball)
        .output()
        .unwrap();
    stdout_of(&output).lines().map(str::to_string).collect()
}

#[test]
fn a_package_for_the_development_board_unpacks_into_a_working_emberd() {
    let dir = fresh_temp_dir("boards-package");
    let image = tiny_image().0;
    let tarball = dir.join("dev.tar.gz");
    let report = stdout_of(&ember(&[
        "package",
        "--board",
        "x86_64-pty",
        "--emberd",
        binary("emberd").to_str().unwrap(),
        "--model",
        image.to_str().unwrap(),
        "-o",
        tarball.to_str().unwrap(),
        "--quiet",
    ]));
    assert!(report.contains("for x86_64-unknown-linux-gnu"), "{report}");
    assert!(!PathBuf::from(format!("{}.part", tarball.display())).exists());

    let listing = tar_listing(&tarball);
    let names: Vec<&str> = listing
        .iter()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ember-x86_64-pty/bin/emberd",
            "ember-x86_64-pty/model.ember",
            "ember-x86_64-pty/board.toml",
            "ember-x86_64-pty/emberd.service",
            "ember-x86_64-pty/INSTALL.md",
        ]
    );
    assert!(listing[0].starts_with("-rwxr-xr-x"), "{}", listing[0]);
    assert!(listing[1].starts_with("-rw-r--r--"), "{}", listing[1]);

    unpack(&tarball, &dir);
    let root = dir.join("ember-x86_64-pty");
    assert_eq!(
        std::fs::read(root.join("bin/emberd")).unwrap(),
        std::fs::read(binary("emberd")).unwrap()
    );
    assert_eq!(
        std::fs::read(root.join("model.ember")).unwrap(),
        std::fs::read(&image).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("board.toml")).unwrap(),
        std::fs::read_to_string(repo_root().join("boards/x86_64-pty.toml")).unwrap()
    );
    let unit = std::fs::read_to_string(root.join("emberd.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/emberd --board /etc/ember/board.toml"),
        "{unit}"
    );
    let note = std::fs::read_to_string(root.join("INSTALL.md")).unwrap();
    assert!(note.contains("systemctl enable --now emberd"), "{note}");

    // The unpacked binary runs with the unpacked profile and model.
    let output = Command::new(root.join("bin/emberd"))
        .arg("--board")
        .arg(root.join("board.toml"))
        .arg("--model")
        .arg(root.join("model.ember"))
        .arg("--dry-run")
        .output()
        .unwrap();
    let stdout = stdout_of(&output);
    assert!(stdout.contains("board    x86_64-pty"), "{stdout}");
}

#[test]
fn packaging_refuses_a_wrong_binary_a_model_over_budget_and_a_damaged_model() {
    let dir = fresh_temp_dir("boards-refuse");
    let image = tiny_image().0;
    let emberd = binary("emberd");
    let tarball = dir.join("out.tar.gz");
    let package = |board: &str, binary: &Path, model: &Path| {
        ember(&[
            "package",
            "--board",
            board,
            "--emberd",
            binary.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "-o",
            tarball.to_str().unwrap(),
            "--quiet",
        ])
    };

    let stderr = failure(&package("rpi5", &emberd, &image));
    assert!(
        stderr.contains("is built for x86_64, but board rpi5 runs aarch64-unknown-linux-gnu"),
        "{stderr}"
    );

    let small = profile_with_budget(&dir, 1);
    let stderr = failure(&package(small.to_str().unwrap(), &emberd, &image));
    assert!(stderr.contains("does not fit board small"), "{stderr}");
    assert!(stderr.contains("memory budget of 1.0 MiB"), "{stderr}");

    let bytes = std::fs::read(&image).unwrap();
    let truncated = dir.join("truncated.ember");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let stderr = failure(&package("x86_64-pty", &emberd, &truncated));
    assert!(stderr.contains("cannot package model"), "{stderr}");

    let not_elf = dir.join("emberd.sh");
    std::fs::write(&not_elf, "#!/bin/sh\n").unwrap();
    let stderr = failure(&package("x86_64-pty", &not_elf, &image));
    assert!(stderr.contains("is not an ELF executable"), "{stderr}");

    assert!(!tarball.exists() && !PathBuf::from(format!("{}.part", tarball.display())).exists());
}

/// The memory plan counts the image as it is: on a 256 MiB budget (a Pi Zero 2 W's), SmolLM2's
/// `--scheme q4` image leaves room for a longer context than its int8 image.
#[test]
fn a_q4_image_leaves_the_board_more_context() {
    let dir = fresh_temp_dir("boards-q4");
    let profile = profile_with_budget(&dir, 256);
    let plan = |image: &Path| {
        let stdout = stdout_of(&emberd(&[
            "--board",
            profile.to_str().unwrap(),
            "--model",
            image.to_str().unwrap(),
            "--dry-run",
        ]));
        let field = |name: &str| {
            dry_run_field(&stdout, name).unwrap_or_else(|| panic!("no {name} in {stdout}"))
        };
        let image_bytes = std::fs::metadata(image).unwrap().len();
        assert!(
            field("memory").contains(&format!("image {}", mib(image_bytes))),
            "{stdout}"
        );
        let context = field("context");
        context
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("context {context:?}"))
    };
    let (int8, q4) = (
        plan(&ember_e2e::smollm2_image().0),
        plan(&ember_e2e::smollm2_q4_image().0),
    );
    eprintln!("context on a 256 MiB budget: int8 {int8}, q4 {q4} positions");
    assert!(q4 > int8, "int8 {int8}, q4 {q4}");
}
