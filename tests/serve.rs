//! `ember serve` with the real clients of its two protocols: the official `openai` Python
//! package against the HTTP API and the official `wyoming` package's `AsyncTcpClient` against
//! the handle service (`tests/scripts/serve_clients.py`), each against an image run in the
//! server's process (`--model`) and against `emberd --pty` behind `--port`.
//!
//! Replies are checked against `ember generate --chat` and against llama.cpp's greedy replies
//! recorded in `tests/fixtures/tiny/golden.json` (the tiny model); cancellation (a client that
//! disconnects, a transcript during a reply) against the device's own log, which names how each
//! reply ended. The clients come from PyPI (`pip install openai==3.57.0 wyoming==1.10.2`, done by
//! `.ci/run`); without them the tests say so and pass, unless `EMBER_REQUIRE_PEER=1` (CI).

use ember_e2e::{
    Running, binary, golden_chat_reply, last_json_line, peers_required, repo_root, smollm2_image,
    stdout_of, tiny_image,
};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The golden replies' length.
const GOLDEN_TOKENS: u32 = 32;

/// Whether the Python clients are installed (a panic in CI when they are not).
fn clients_installed() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openai, wyoming"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !peers_required(),
            "the openai and wyoming Python packages are missing: pip install openai==3.57.0 wyoming==1.10.2"
        );
        eprintln!("skipped: pip install openai==3.57.0 wyoming==1.10.2 to run these tests");
    }
    ok
}

/// A running `ember serve` with both front ends on free ports, its log in a file.
struct Server {
    child: Running,
    http: String,
    wyoming_host: String,
    wyoming_port: String,
    log: PathBuf,
    /// `emberd` behind `--port`, if any, and its log.
    device: Option<(Running, PathBuf)>,
}

impl Server {
    /// `ember serve --model IMAGE` (with `extra` flags).
    fn here(image: &Path, name: &str, extra: &[&str]) -> Server {
        let image = image.to_str().expect("UTF-8 path");
        Server::start(&["--model", image, "--threads", "2"], name, extra, None)
    }

    /// `emberd --pty --model IMAGE` (with `device_extra`), and `ember serve --port PTY`.
    fn device(image: &Path, name: &str, device_extra: &[&str]) -> Server {
        let log = log_file(&format!("{name}-emberd"));
        let mut args = vec!["--threads", "2"];
        args.extend(device_extra);
        let mut command = Command::new(binary("emberd"));
        command
            .args(["--model", image.to_str().expect("UTF-8 path"), "--pty"])
            .args(&args)
            .stderr(std::fs::File::create(&log).expect("log file"));
        let (emberd, pty) = ember_e2e::serve_on_pty(command);
        let pty = pty.to_str().expect("UTF-8 path");
        Server::start(&["--port", pty], name, &[], Some((emberd, log)))
    }

    fn start(
        backend: &[&str],
        name: &str,
        extra: &[&str],
        device: Option<(Running, PathBuf)>,
    ) -> Server {
        let log = log_file(name);
        let mut child = Command::new(binary("ember"))
            .arg("serve")
            .args(backend)
            .args(["--http", "127.0.0.1:0", "--wyoming", "tcp://127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("ember serve starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut next = || {
            lines
                .next()
                .and_then(Result::ok)
                .unwrap_or_else(|| panic!("ember serve stopped: {}", read(&log)))
        };
        let http = next();
        let wyoming = next();
        assert!(http.starts_with("http://127.0.0.1:"), "{http}");
        let (host, port) = wyoming
            .strip_prefix("tcp://")
            .and_then(|a| a.rsplit_once(':'))
            .unwrap_or_else(|| panic!("not a Wyoming address: {wyoming}"));
        Server {
            child: Running(child),
            http,
            wyoming_host: host.to_string(),
            wyoming_port: port.to_string(),
            log,
            device,
        }
    }

    /// Runs the Python clients' `command` against the HTTP API.
    fn openai(&self, command: &str, args: &[&str]) -> Value {
        let mut all = vec![command, self.http.as_str()];
        all.extend(args);
        python(&all)
    }

    /// Runs the Python clients' `command` against the Wyoming service.
    fn wyoming(&self, command: &str, args: &[&str]) -> Value {
        let mut all = vec![command, &self.wyoming_host, &self.wyoming_port];
        all.extend(args);
        python(&all)
    }

    /// The log of the device that ran the replies: emberd's, or the server's own when the
    /// device runs in its process.
    fn device_log(&self) -> String {
        read(self.device.as_ref().map_or(&self.log, |(_, log)| log))
    }

    /// Whether the server still runs.
    fn alive(&mut self) -> bool {
        self.child.0.try_wait().expect("wait").is_none()
    }

    /// The server's peak resident memory, in KiB.
    fn peak_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
        if let Some((_, log)) = &self.device {
            let _ = std::fs::remove_file(log);
        }
    }
}

fn log_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ember-serve-{name}-{}.log", std::process::id()))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs `tests/scripts/serve_clients.py ARGS` and returns the JSON it prints.
fn python(args: &[&str]) -> Value {
    let script = repo_root().join("tests/scripts/serve_clients.py");
    let output = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "serve_clients.py {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// `ember generate --chat`'s greedy reply to `prompt` on `image`.
fn generated(image: &Path, prompt: &str, max_tokens: u32) -> String {
    let output = Command::new(binary("ember"))
        .args(["generate", "--chat", "--json", "--model"])
        .arg(image)
        .args(["--prompt", prompt, "--max-tokens", &max_tokens.to_string()])
        .output()
        .expect("ember generate runs");
    last_json_line(&stdout_of(&output))["text"]
        .as_str()
        .expect("text")
        .to_string()
}

/// Whitespace-separated words (sentences are trimmed and joined without their spacing).
fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// The OpenAI client's checks against `server` serving the tiny model.
fn openai_on_tiny(server: &Server) {
    let image = tiny_image().0;
    let prompt = "Hi there!";
    let golden = golden_chat_reply(prompt);
    assert_eq!(generated(&image, prompt, GOLDEN_TOKENS), golden);
    let out = server.openai("openai", &[prompt, &GOLDEN_TOKENS.to_string()]);
    assert_eq!(out["models"], serde_json::json!(["ember-tiny"]));
    let plain = &out["plain"];
    assert_eq!(plain["text"], golden.as_str(), "{out}");
    assert_eq!(plain["finish_reason"], "length");
    assert_eq!(plain["model"], "ember-tiny");
    assert_eq!(plain["usage"]["completion_tokens"], GOLDEN_TOKENS);
    let prompt_tokens = plain["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 3, "{plain}");
    assert_eq!(
        plain["usage"]["total_tokens"].as_u64().unwrap(),
        prompt_tokens + u64::from(GOLDEN_TOKENS)
    );
    let streamed = &out["streamed"];
    assert_eq!(streamed["text"], golden.as_str(), "{out}");
    assert!(streamed["chunks"].as_u64().unwrap() > 1, "{streamed}");
    assert_eq!(streamed["roles"], serde_json::json!(["assistant"]));
    assert_eq!(streamed["finish_reason"], "length");
    assert_eq!(streamed["usage"]["completion_tokens"], GOLDEN_TOKENS);
    assert_eq!(
        out["max_completion_tokens"]["usage"]["completion_tokens"],
        4
    );
    // The same conversation continued in the device's cache and replayed onto it as history.
    assert_eq!(out["extended"]["text"], out["replayed"]["text"], "{out}");
    assert!(
        out["extended"]["usage"]["prompt_tokens"].as_u64().unwrap() > prompt_tokens + 32,
        "the second turn's prompt holds the first: {out}"
    );
    assert_eq!(out["after"]["text"], golden.as_str());
    assert!(!out["parts"]["text"].as_str().unwrap().is_empty());
    let bad = &out["bad"];
    for (case, status, param) in [
        ("negative_max_tokens", 400, Some("max_tokens")),
        ("unknown_role", 400, Some("messages[0].role")),
        ("streamed_unknown_role", 400, Some("messages[0].role")),
        ("last_not_user", 400, Some("messages")),
        ("temperature", 400, Some("temperature")),
        ("too_many_stops", 400, Some("stop")),
        ("too_long_for_context", 400, None),
        ("invalid_json", 400, None),
        ("oversized", 413, None),
        ("unknown_url", 404, None),
    ] {
        assert_eq!(bad[case]["status"], status, "{case}: {bad}");
        if let Some(param) = param {
            assert_eq!(bad[case]["param"], param, "{case}: {bad}");
            assert_eq!(bad[case]["type"], "invalid_request_error", "{case}");
        }
    }
    assert_eq!(
        bad["too_long_for_context"]["code"],
        "context_length_exceeded"
    );
    assert_eq!(bad["unknown_url"]["code"], "unknown_url");
}

#[test]
fn openai_clients_against_an_image_run_here() {
    if !clients_installed() {
        return;
    }
    let mut server = Server::here(&tiny_image().0, "openai-here", &[]);
    openai_on_tiny(&server);
    assert!(server.alive());
}

#[test]
fn openai_clients_against_a_device_on_a_serial_line() {
    if !clients_installed() {
        return;
    }
    let mut server = Server::device(&tiny_image().0, "openai-device", &[]);
    openai_on_tiny(&server);
    assert!(server.alive());
}

/// A client that closes its stream mid-reply, and one that gives up a plain request after 1 s:
/// the device's replies end `cancelled` (its log says so), and the next request is answered.
fn disconnect_cancels(server: &Server) {
    let out = server.openai(
        "disconnect",
        &["Tell me a long story about a dragon and a knight."],
    );
    assert!(!out["received"].as_str().unwrap().is_empty(), "{out}");
    assert!(!out["after"]["text"].as_str().unwrap().is_empty(), "{out}");
    assert_eq!(out["gave_up"], true, "{out}");
    let log = server.device_log();
    assert_eq!(
        log.matches("reply: cancelled").count(),
        2,
        "the device did not cancel both replies: {log}"
    );
}

/// SmolLM2 ends its replies itself: a request that extends the conversation the device holds
/// prefills only its new message (the rest is cached), and the same request after another
/// conversation is replayed as history and gets the same reply.
fn conversation_continued_and_replayed(server: &Server) {
    let out = server.openai("conversation", &[]);
    assert_eq!(out["first"]["finish_reason"], "stop", "{out}");
    let cached = |name: &str| out[name]["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    let first_total = out["first"]["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(cached("first"), Some(0), "{out}");
    // The first turn (prompt and reply but its last token) stayed in the cache.
    assert!(cached("continued").unwrap() >= first_total - 1, "{out}");
    assert_eq!(cached("replayed"), Some(0), "{out}");
    assert_eq!(out["continued"]["text"], out["replayed"]["text"], "{out}");
    assert_eq!(
        out["continued"]["usage"]["prompt_tokens"], out["replayed"]["usage"]["prompt_tokens"],
        "{out}"
    );
    let first = out["first"]["text"].as_str().unwrap();
    assert!(first.contains("Paris"), "{first}");
}

#[test]
fn a_client_that_disconnects_cancels_the_reply() {
    if !clients_installed() {
        return;
    }
    let image = smollm2_image().0;
    let here = Server::here(&image, "disconnect-here", &[]);
    disconnect_cancels(&here);
    conversation_continued_and_replayed(&here);
    let device = Server::device(&image, "disconnect-device", &[]);
    disconnect_cancels(&device);
    conversation_continued_and_replayed(&device);
}

/// The Wyoming client's checks against `server` serving the tiny model.
fn wyoming_on_tiny(server: &Server) {
    let prompt = "Hi there!";
    let golden = golden_chat_reply(prompt);
    let out = server.wyoming("wyoming", &[prompt]);
    let info = &out["info"];
    assert_eq!(info["name"], "ember");
    assert_eq!(info["model"], "ember-tiny");
    assert_eq!(info["streaming"], true);
    assert_eq!(info["installed"], true);
    assert_eq!(info["languages"], serde_json::json!(["en"]));
    assert_eq!(info["attribution"], "Ember");
    assert!(info["version"].is_string() && info["description"].is_string());
    let events = out["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    // Wyoming's streamed answer: start, chunks, the whole reply again (for clients that do not
    // stream), stop.
    assert_eq!(kinds.first(), Some(&"handled-start"), "{out}");
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["handled", "handled-stop"],
        "{out}"
    );
    assert!(
        kinds[1..kinds.len() - 2]
            .iter()
            .all(|k| *k == "handled-chunk")
    );
    assert_eq!(events[kinds.len() - 2]["text"], golden.as_str(), "{out}");
    let chunks: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "handled-chunk")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(!chunks.is_empty());
    let joined = chunks.join(" ");
    assert_eq!(words(&joined), words(&golden), "{out}");
    assert_eq!(out["empty"][0]["type"], "not-handled");
}

#[test]
fn wyoming_clients_against_an_image_run_here() {
    if !clients_installed() {
        return;
    }
    let args = ["--max-tokens", "32"];
    let mut server = Server::here(&tiny_image().0, "wyoming-here", &args);
    wyoming_on_tiny(&server);
    assert!(server.alive());
}

#[test]
fn wyoming_clients_against_a_device_on_a_serial_line() {
    if !clients_installed() {
        return;
    }
    let mut server = Server::device(&tiny_image().0, "wyoming-device", &["--max-tokens", "32"]);
    wyoming_on_tiny(&server);
    assert!(server.alive());
}

/// A transcript during a reply: the reply stops (`handled` with what was said and
/// `handled-stop`, the device's log says `cancelled`), and the new transcript gets a whole reply.
fn barge_in(server: &Server, image: &Path) {
    let first = "Tell me a long story about a dragon and a knight.";
    let out = server.wyoming("barge-in", &[first, "What is the capital of France?"]);
    let said: Vec<&str> = out["first"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "handled-chunk")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(out["first"][0]["type"], "handled-start", "{out}");
    let first_events = out["first"].as_array().unwrap();
    assert_eq!(first_events.last().unwrap()["type"], "handled-stop");
    // The cut reply's `handled` is what was said.
    let handled = &first_events[first_events.len() - 2];
    assert_eq!(handled["type"], "handled", "{out}");
    let whole = generated(image, first, 256);
    let said = said.join(" ");
    assert!(
        words(handled["text"].as_str().unwrap()).starts_with(&words(&said)),
        "{out}"
    );
    assert!(
        words(&said).len() < words(&whole).len() && words(&whole).starts_with(&words(&said)),
        "the first reply was not cut short: {said:?} vs {whole:?}"
    );
    let second = out["second"].as_array().unwrap();
    assert_eq!(second[0]["type"], "handled-start", "{out}");
    assert_eq!(second.last().unwrap()["type"], "handled-stop");
    assert!(second.len() >= 3, "{out}");
    let log = server.device_log();
    assert!(log.contains("reply: cancelled"), "{log}");
}

#[test]
fn a_transcript_during_a_reply_cancels_it() {
    if !clients_installed() {
        return;
    }
    let image = smollm2_image().0;
    barge_in(&Server::here(&image, "barge-in-here", &[]), &image);
    barge_in(&Server::device(&image, "barge-in-device", &[]), &image);
}

/// 50 clients at once against a queue of 4: each is answered or gets the documented busy
/// answer (503, `Retry-After`, code `busy`); the server lives on, its memory bounded.
#[test]
fn fifty_clients_at_once() {
    if !clients_installed() {
        return;
    }
    let mut server = Server::here(&tiny_image().0, "load", &["--queue", "4"]);
    let before = server.peak_kib();
    let started = Instant::now();
    let out = server.openai("load", &["50"]);
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 50);
    let answered = results.iter().filter(|r| r["status"] == 200).count();
    let busy = results.iter().filter(|r| r["status"] == 503).count();
    for r in results {
        match r["status"].as_u64() {
            Some(200) => assert!(!r["text"].as_str().unwrap().is_empty()),
            Some(503) => {
                assert_eq!(r["code"], "busy", "{r}");
                let after: u64 = r["retry_after"].as_str().unwrap().parse().unwrap();
                assert!(after >= 1, "{r}");
            }
            _ => panic!("neither answered nor busy: {r}"),
        }
    }
    assert!(answered >= 5, "{answered} answered, {busy} busy");
    let peak = server.peak_kib();
    eprintln!(
        "50 clients: {answered} answered, {busy} busy, in {:.1} s; server peak memory {} MiB (before {} MiB)",
        started.elapsed().as_secs_f64(),
        peak / 1024,
        before / 1024
    );
    assert!(
        peak < before + 256 * 1024,
        "memory grew by {} MiB",
        (peak - before) / 1024
    );
    assert!(server.alive());
    let again = server.openai("ask", &["Hi there!"]);
    assert_eq!(again["finish_reason"], "length");
}

#[test]
fn an_api_key_is_required_when_given() {
    if !clients_installed() {
        return;
    }
    let server = Server::here(&tiny_image().0, "auth", &["--api-key", "s3cret"]);
    let out = server.openai("auth", &["s3cret"]);
    assert_eq!(out["missing"]["status"], 401, "{out}");
    assert_eq!(out["missing"]["code"], "invalid_api_key");
    assert_eq!(out["wrong"]["status"], 401, "{out}");
    assert_eq!(out["wrong"]["code"], "invalid_api_key");
    assert!(!out["right"]["text"].as_str().unwrap().is_empty());
}

#[test]
fn bad_command_lines_get_clear_errors() {
    let image = tiny_image().0;
    let image = image.to_str().unwrap();
    let gguf = ember_e2e::tiny_model();
    let gguf = gguf.to_str().unwrap();
    for (args, says) in [
        (
            vec!["serve", "--model", gguf, "--http", "0"],
            "make one with `ember quantize`",
        ),
        (vec!["serve", "--model", image], "give --http"),
        (
            vec!["serve", "--model", "/nonexistent.ember", "--http", "0"],
            "/nonexistent.ember",
        ),
        (
            vec!["serve", "--port", "/dev/nonexistent-tty", "--http", "0"],
            "/dev/nonexistent-tty",
        ),
        (
            vec!["serve", "--model", image, "--http", "nowhere"],
            "is not ADDR:PORT",
        ),
        (
            vec!["serve", "--model", image, "--wyoming", "udp://x"],
            "is not tcp://ADDR:PORT",
        ),
    ] {
        let output = Command::new(binary("ember"))
            .args(&args)
            .stdout(Stdio::null())
            .output()
            .expect("ember runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = Command::new(binary("ember"))
        .args(["serve", "--model", image, "--http", &port])
        .output()
        .expect("ember runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

/// The voice-kiosk example, a Wyoming client of `ember serve` in front of `emberd`: the events
/// it receives on stdout, one sentence after another, spoken to WAV files by espeak-ng when it
/// is installed (`.ci/run` installs it).
#[test]
fn voice_kiosk_example_speaks_sentences() {
    let server = Server::device(&tiny_image().0, "kiosk", &["--max-tokens", "32"]);
    let kiosk = binary("examples/voice_kiosk");
    let wav_dir = std::env::temp_dir().join(format!("ember-kiosk-{}", std::process::id()));
    let espeak = Command::new("espeak-ng").arg("--version").output().is_ok();
    let mut command = Command::new(kiosk);
    let address = format!("tcp://{}:{}", server.wyoming_host, server.wyoming_port);
    command.args(["--wyoming", &address]);
    if espeak {
        command.arg("--wav-dir").arg(&wav_dir);
    } else {
        eprintln!("espeak-ng is not installed: checking the events only");
        command.arg("--no-speech");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"Hi there!\n").unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let events: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["type"], "handled-start");
    assert_eq!(events[events.len() - 2]["type"], "handled");
    assert_eq!(events.last().unwrap()["type"], "handled-stop");
    let sentences: Vec<&str> = events[1..events.len() - 2]
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "handled-chunk");
            e["data"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        words(&sentences.join(" ")),
        words(&golden_chat_reply("Hi there!"))
    );
    if espeak {
        for i in 0..sentences.len() {
            let wav = std::fs::read(wav_dir.join(format!("{i:04}.wav"))).unwrap();
            assert_eq!(&wav[..4], b"RIFF", "sentence {i} was not spoken");
        }
        let _ = std::fs::remove_dir_all(&wav_dir);
    }
}

/// A device that stops answering: the request gets 502 `device_unavailable`, the server lives
/// on and says the same to the next request (it tries the line again each time).
#[test]
fn a_device_that_stops_answering_gets_502() {
    if !clients_installed() {
        return;
    }
    let mut server = Server::device(&tiny_image().0, "gone", &[]);
    let answered = server.openai("ask", &["Hi there!"]);
    assert_eq!(answered["finish_reason"], "length");
    if let Some((emberd, _)) = &mut server.device {
        let _ = emberd.0.kill();
        let _ = emberd.0.wait();
    }
    for _ in 0..2 {
        let out = server.openai("ask-status", &["Hi there!"]);
        assert_eq!(out["status"], 502, "{out}");
        assert_eq!(out["code"], "device_unavailable", "{out}");
    }
    assert!(server.alive());
}
