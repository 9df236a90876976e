//! Soak and noise: a long conversation with `emberd` whose memory must stay flat, many hosts
//! connecting and leaving, and chats through a noisy line (`ember line --corrupt-every …
//! --drop-every …`) that the host recovers from by itself. All real processes on PTYs, on the
//! tiny synthetic model.
//!
//! The tests without `#[ignore]` are short versions (20 turns, 20 cycles, 20 noisy turns) run
//! by `cargo test`. The full runs, whose figures are in the README ("Soak and noise"):
//!
//! ```sh
//! cargo test --release -p ember-e2e --test soak -- --ignored --nocapture --test-threads 1
//! ```
//!
//! `EMBER_SOAK_TURNS`, `EMBER_SOAK_CYCLES` and `EMBER_NOISY_TURNS` change their lengths
//! (1000, 1000 and 200).

use ember_core::protocol::{ChatOptions, Event, Request};
use ember_e2e::{Running, binary, emberd_on_pty, tiny_image};
use ember_serial::{Client, Recovery};
use ember_tools::remote;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A small context, so that turns are dropped often, and short replies.
const DEVICE: &[&str] = &["--context", "160", "--max-tokens", "24", "--threads", "2"];

/// Messages the host cycles through.
const MESSAGES: &[&str] = &[
    "Hi there!",
    "What is the weather like?",
    "Tell me a story about a dragon.",
    "And tomorrow?",
    "Why is the sky blue? Answer in one sentence, please.",
    "Count to five.",
    "What did I ask first?",
    "Thanks!",
];

/// `EMBER_…` as a number, else `default`.
fn length(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// RssAnon of process `pid`, in kB.
fn rss_anon_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status")
}

/// Least-squares slope of `samples` (x, kB), in kB per 100 x.
fn slope_per_100(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 - my)).sum();
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { 100.0 * sxy / sxx }
}

/// Memory samples: (turn or cycle, RssAnon kB).
struct Memory {
    pid: u32,
    samples: Vec<(f64, f64)>,
}

impl Memory {
    fn new(pid: u32) -> Memory {
        Memory {
            pid,
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, at: usize) {
        self.samples.push((at as f64, rss_anon_kb(self.pid) as f64));
    }

    /// First and last sample, and the slope (kB per 100) after the first tenth (warm-up).
    fn report(&self, total: usize) -> (f64, f64, f64) {
        let warm: Vec<(f64, f64)> = self
            .samples
            .iter()
            .copied()
            .filter(|s| s.0 >= total as f64 / 10.0)
            .collect();
        let first = self.samples.first().map_or(0.0, |s| s.1);
        let last = self.samples.last().map_or(0.0, |s| s.1);
        (first, last, slope_per_100(&warm))
    }
}

#[test]
fn slope_is_least_squares() {
    let samples: Vec<(f64, f64)> = (0..10)
        .map(|i| (i as f64 * 10.0, 500.0 + i as f64))
        .collect();
    assert!((slope_per_100(&samples) - 10.0).abs() < 1e-9);
    assert_eq!(slope_per_100(&[(1.0, 3.0), (2.0, 3.0)]), 0.0);
}

/// What a conversation soak saw.
struct Soak {
    turns: usize,
    failures: Vec<String>,
    resent: u32,
    dropped: u64,
    finishes: std::collections::BTreeMap<&'static str, usize>,
    memory: (f64, f64, f64),
    wall: Duration,
}

/// `turns` turns of one conversation over `emberd` in frame mode, sampling on (temperature 0.8,
/// a seed per turn), with a context small enough that turns are dropped every few turns.
fn conversation(turns: usize) -> Soak {
    let (child, port) = emberd_on_pty(&tiny_image().0, DEVICE);
    let pid = child.0.id();
    let start = Instant::now();
    let mut client = Client::connect(&port, 115_200, Duration::from_secs(5)).expect("greeting");
    let session = remote::new_session();
    let mut memory = Memory::new(pid);
    let every = (turns / 50).max(1);
    let mut soak = Soak {
        turns,
        failures: Vec::new(),
        resent: 0,
        dropped: 0,
        finishes: Default::default(),
        memory: (0.0, 0.0, 0.0),
        wall: Duration::ZERO,
    };
    for turn in 0..turns {
        if turn % every == 0 {
            memory.sample(turn);
        }
        let options = ChatOptions {
            temperature: Some(0.8),
            top_k: Some(40),
            top_p: Some(0.95),
            seed: Some(turn as u64),
            ..ChatOptions::default()
        };
        let message = MESSAGES[turn % MESSAGES.len()];
        let request = remote::chat_request(session, message, options).unwrap();
        match remote::converse(
            &mut client,
            &request,
            Recovery::default(),
            None,
            &mut |_| {},
        ) {
            Ok(reply) => {
                soak.resent += reply.resent;
                soak.dropped += u64::from(reply.stats.turns_dropped);
                *soak.finishes.entry(reply.finish).or_default() += 1;
                if !["eos", "length", "stop"].contains(&reply.finish) || !reply.errors.is_empty() {
                    soak.failures.push(format!(
                        "turn {turn}: {} {:?} {:?}",
                        reply.finish, reply.errors, reply.warnings
                    ));
                }
            }
            Err(e) => soak.failures.push(format!("turn {turn}: {e}")),
        }
    }
    memory.sample(turns);
    client.goodbye(Duration::from_secs(5)).expect("goodbye");
    soak.wall = start.elapsed();
    soak.memory = memory.report(turns);
    drop(child);
    eprintln!(
        "conversation: {} turns, {} failures, {} re-sent, {} turns dropped by the device, \
         finishes {:?}, RssAnon {:.0} → {:.0} kB, slope {:+.1} kB per 100 turns, {:.1} s",
        soak.turns,
        soak.failures.len(),
        soak.resent,
        soak.dropped,
        soak.finishes,
        soak.memory.0,
        soak.memory.1,
        soak.memory.2,
        soak.wall.as_secs_f64()
    );
    soak
}

#[test]
fn conversation_short() {
    let soak = conversation(20);
    assert!(soak.failures.is_empty(), "{:#?}", soak.failures);
    assert!(soak.dropped > 0, "the context never filled");
    assert_eq!(soak.resent, 0, "nothing is lost on a bare PTY");
}

#[test]
#[ignore = "a soak run (minutes): cargo test --release -p ember-e2e --test soak -- --ignored"]
fn conversation_soak() {
    let turns = length("EMBER_SOAK_TURNS", 1000);
    let soak = conversation(turns);
    assert!(soak.failures.is_empty(), "{:#?}", soak.failures);
    assert!(
        soak.dropped > turns as u64 / 10,
        "turns were rarely dropped"
    );
    assert!(
        soak.memory.2.abs() < 64.0,
        "RssAnon grows by {:.1} kB per 100 turns",
        soak.memory.2
    );
}

/// What the connect/disconnect cycles saw.
struct Cycles {
    failures: Vec<String>,
    chats: usize,
    memory: (f64, f64, f64),
    wall: Duration,
}

/// `cycles` hosts, one after another, each opening the port, greeting (`0x00` + `Hello`) and
/// closing it: some say `Goodbye`, some just close; every other one chats first, and some of
/// those close in the middle of the reply (the next host's greeting stops it).
fn connect_cycles(cycles: usize) -> Cycles {
    let (child, port) = emberd_on_pty(&tiny_image().0, DEVICE);
    let pid = child.0.id();
    let start = Instant::now();
    let mut memory = Memory::new(pid);
    let every = (cycles / 50).max(1);
    let mut out = Cycles {
        failures: Vec::new(),
        chats: 0,
        memory: (0.0, 0.0, 0.0),
        wall: Duration::ZERO,
    };
    for cycle in 0..cycles {
        if cycle % every == 0 {
            memory.sample(cycle);
        }
        if let Err(e) = one_cycle(&port, cycle, &mut out.chats) {
            out.failures.push(format!("cycle {cycle}: {e}"));
        }
    }
    memory.sample(cycles);
    // The device still answers a whole ask.
    let mut client = Client::connect(&port, 115_200, Duration::from_secs(5)).expect("greeting");
    let request = remote::chat_request(1, "Hi there!", ChatOptions::default()).unwrap();
    let reply = remote::converse(
        &mut client,
        &request,
        Recovery::default(),
        None,
        &mut |_| {},
    )
    .expect("a reply after the cycles");
    assert_eq!(reply.finish, "length");
    out.wall = start.elapsed();
    out.memory = memory.report(cycles);
    drop(child);
    eprintln!(
        "connect cycles: {cycles} cycles ({} with a chat), {} failures, RssAnon {:.0} → {:.0} kB, \
         slope {:+.1} kB per 100 cycles, {:.1} s",
        out.chats,
        out.failures.len(),
        out.memory.0,
        out.memory.1,
        out.memory.2,
        out.wall.as_secs_f64()
    );
    out
}

fn one_cycle(port: &Path, cycle: usize, chats: &mut usize) -> anyhow::Result<()> {
    let mut client = Client::connect(port, 115_200, Duration::from_secs(2))?;
    if cycle % 2 == 1 {
        *chats += 1;
        let options = ChatOptions {
            temperature: Some(0.8),
            seed: Some(cycle as u64),
            ..ChatOptions::default()
        };
        let message = MESSAGES[cycle % MESSAGES.len()];
        let request = remote::chat_request(cycle as u32 + 1, message, options)?;
        if cycle % 6 == 5 {
            // Leave in the middle of the reply.
            client.send(&request)?;
            client.until(
                Duration::from_secs(5),
                |e| matches!(e, Event::Token { .. } | Event::End { .. }),
                &mut |_| {},
            )?;
            return Ok(());
        }
        let reply = remote::converse(
            &mut client,
            &request,
            Recovery::default(),
            None,
            &mut |_| {},
        )?;
        if !["eos", "length", "stop"].contains(&reply.finish) || !reply.errors.is_empty() {
            anyhow::bail!("reply {} {:?}", reply.finish, reply.errors);
        }
    }
    match cycle % 3 {
        0 => {
            client.goodbye(Duration::from_secs(2))?;
        }
        1 => {
            // Status, then close without a word.
            client.ask(&Request::Status, Duration::from_secs(2), |e| {
                matches!(e, Event::Status(_))
            })?;
        }
        _ => {}
    }
    Ok(())
}

#[test]
fn connect_cycles_short() {
    let cycles = connect_cycles(20);
    assert!(cycles.failures.is_empty(), "{:#?}", cycles.failures);
}

#[test]
#[ignore = "a soak run (minutes): cargo test --release -p ember-e2e --test soak -- --ignored"]
fn connect_cycles_soak() {
    let n = length("EMBER_SOAK_CYCLES", 1000);
    let cycles = connect_cycles(n);
    assert!(cycles.failures.is_empty(), "{:#?}", cycles.failures);
    assert!(
        cycles.memory.2.abs() < 64.0,
        "RssAnon grows by {:.1} kB per 100 cycles",
        cycles.memory.2
    );
}

/// `ember line` with its extra arguments: the process, the device's end, the host's end, and
/// the file its counters go to.
fn noisy_line(extra: &[&str], log: &Path) -> (Running, PathBuf, PathBuf) {
    let mut child = Command::new(binary("ember"))
        .args(["line", "--baud", "115200"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("line log"))
        .spawn()
        .expect("ember line starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut end = |name: &str| {
        let line = lines.next().expect("a line").expect("text");
        PathBuf::from(line.strip_prefix(name).expect("named end").trim())
    };
    let device = end("device ");
    let host = end("host ");
    (Running(child), device, host)
}

/// What a noisy chat saw.
struct Noisy {
    replies: Vec<serde_json::Value>,
    stderr: String,
    success: bool,
    wall: Duration,
}

impl Noisy {
    fn count(&self, finish: &str) -> usize {
        self.replies
            .iter()
            .filter(|r| r["finish"] == finish)
            .count()
    }

    fn resent(&self) -> u64 {
        self.replies
            .iter()
            .filter_map(|r| r["resent"].as_u64())
            .sum()
    }

    fn with_warnings(&self) -> usize {
        self.replies
            .iter()
            .filter(|r| r["warnings"].as_array().is_some_and(|w| !w.is_empty()))
            .count()
    }
}

/// `turns` messages through `ember chat --port` over `ember line` with `noise` (its fault
/// arguments), `emberd` on the other end.
fn noisy_chat(turns: usize, noise: &[&str]) -> Noisy {
    let dir = ember_e2e::fresh_temp_dir("soak-noisy");
    let (line, device, host) = noisy_line(noise, &dir.join("line.log"));
    let mut emberd = Command::new(binary("emberd"));
    emberd
        .arg("--model")
        .arg(tiny_image().0)
        .arg("--port")
        .arg(&device)
        .args(["--baud", "115200"])
        .args(DEVICE)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("emberd.log")).unwrap());
    let emberd = Running(emberd.spawn().expect("emberd starts"));
    std::thread::sleep(Duration::from_millis(500));
    let input: String = (0..turns)
        .map(|t| format!("{}\n", MESSAGES[t % MESSAGES.len()]))
        .collect();
    let start = Instant::now();
    let output = ember_e2e::ember_at(
        &host,
        &[
            "chat",
            "--json",
            "-n",
            "24",
            "--temperature",
            "0.8",
            "--silence-ms",
            "1000",
        ],
        &input,
    );
    let wall = start.elapsed();
    // Let the line report what crossed.
    std::thread::sleep(Duration::from_secs(6));
    drop(emberd);
    drop(line);
    let noisy = Noisy {
        replies: String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        success: output.status.success(),
        wall,
    };
    let counters = std::fs::read_to_string(dir.join("line.log")).unwrap_or_default();
    eprintln!(
        "noisy chat {noise:?}: {turns} messages, {} replies ({} eos, {} length, {} lost end, \
         {} with warnings), {} re-sent, exit {}, {:.1} s; line: {}",
        noisy.replies.len(),
        noisy.count("eos"),
        noisy.count("length"),
        noisy.count("lost"),
        noisy.with_warnings(),
        noisy.resent(),
        if noisy.success { "ok" } else { "failed" },
        noisy.wall.as_secs_f64(),
        counters.lines().last().unwrap_or("")
    );
    noisy
}

/// Every message got a reply (or a typed error would have ended `ember chat`), and the host
/// recovered by itself.
fn assert_recovered(noisy: &Noisy, turns: usize) {
    assert!(noisy.success, "ember chat failed: {}", noisy.stderr);
    assert_eq!(noisy.replies.len(), turns, "{}", noisy.stderr);
    for reply in &noisy.replies {
        let finish = reply["finish"].as_str().unwrap();
        assert!(
            ["eos", "length", "stop", "lost"].contains(&finish),
            "{reply}"
        );
    }
}

#[test]
fn noisy_chat_short() {
    // Harsher than the soak's noise, both ways, so that 20 turns meet some.
    let noise = [
        "--corrupt-every",
        "700",
        "--drop-every",
        "900",
        "--both-ways",
    ];
    let noisy = noisy_chat(20, &noise);
    assert_recovered(&noisy, 20);
    assert!(
        noisy.resent() > 0 || noisy.with_warnings() > 0,
        "the noise met nothing: {}",
        noisy.stderr
    );
}

#[test]
#[ignore = "a soak run (minutes): cargo test --release -p ember-e2e --test soak -- --ignored"]
fn noisy_chat_soak() {
    let turns = length("EMBER_NOISY_TURNS", 200);
    for noise in [
        &["--corrupt-every", "10000", "--drop-every", "10000"][..],
        &[
            "--corrupt-every",
            "10000",
            "--drop-every",
            "10000",
            "--both-ways",
        ],
    ] {
        let noisy = noisy_chat(turns, noise);
        assert_recovered(&noisy, turns);
    }
}

/// `ember ask` recovers too: a question through a noisy line, asked many times.
#[test]
fn ember_ask_through_a_noisy_line() {
    let dir = ember_e2e::fresh_temp_dir("soak-ask");
    let (_line, device, host) = noisy_line(
        &[
            "--corrupt-every",
            "2000",
            "--drop-every",
            "2500",
            "--both-ways",
        ],
        &dir.join("line.log"),
    );
    let _emberd = Running(
        Command::new(binary("emberd"))
            .arg("--model")
            .arg(tiny_image().0)
            .arg("--port")
            .arg(&device)
            .args(DEVICE)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut answered = 0;
    for _ in 0..6 {
        let output = ember_e2e::ember_at(
            &host,
            &["ask", "--json", "--silence-ms", "1000", "Hi there!"],
            "",
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let reply = ember_e2e::last_json_line(&ember_e2e::stdout_of(&output));
        assert!(
            ["eos", "length", "lost"].contains(&reply["finish"].as_str().unwrap()),
            "{reply}"
        );
        answered += 1;
    }
    assert_eq!(answered, 6);
}
