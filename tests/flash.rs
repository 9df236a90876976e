//! Flashing models over the serial line: real `emberd` processes serving slot directories,
//! real PTYs (bare, or joined by `ember line` at a real line's speed), the real `ember flash`.
//!
//! The image flashed is the tiny golden model (seed 42); the device starts on another model
//! (seed 43). A flashed device must then give llama.cpp's greedy reply from
//! `tests/fixtures/tiny/golden.json`; a device that refused an image must still give its old
//! model's reply.

use ember_core::flash::{FLASH_BLOCK, FlashOutcome, Position, Slot, SlotTable};
use ember_core::frame::crc32;
use ember_core::image::{HEADER_LEN, ImageHeader, Manifest};
use ember_core::protocol::{
    ChatOptions, ChatRequest, ErrorCode, Event, FlashBegin, FlashChunk, Request, truncated,
};
use ember_e2e::{
    Running, binary, ember, ember_at, fresh_temp_dir, golden_chat_reply, serve_on_pty, stdout_of,
    tiny_golden, tiny_image,
};
use ember_serial::Client;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The golden chat prompt whose reply proves which model a device serves.
fn probe() -> (String, String) {
    let golden = tiny_golden();
    let case = golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["chat"] == true && c["exact"]["stop_type"] == "limit")
        .expect("a golden chat case");
    let prompt = case["prompt"].as_str().expect("prompt").to_string();
    let reply = golden_chat_reply(&prompt);
    (prompt, reply)
}

/// The golden model's image and another model's (seed 43), both made by `ember quantize`.
fn images() -> (PathBuf, PathBuf) {
    static OTHER: OnceLock<PathBuf> = OnceLock::new();
    let golden = tiny_image().0;
    let other = OTHER
        .get_or_init(|| {
            let dir = fresh_temp_dir("flash-other");
            let gguf = dir.join("other.gguf");
            let image = dir.join("other.ember");
            stdout_of(&ember(&[
                "synth",
                "-o",
                gguf.to_str().unwrap(),
                "--seed",
                "43",
            ]));
            stdout_of(&ember(&[
                "quantize",
                gguf.to_str().unwrap(),
                "-o",
                image.to_str().unwrap(),
                "--quiet",
                "--no-report",
            ]));
            image
        })
        .clone();
    (golden, other)
}

/// A slot directory whose slot A holds `image`.
fn slot_dir(name: &str, image: &Path) -> PathBuf {
    let dir = fresh_temp_dir(name);
    let slots = dir.join("slots");
    std::fs::create_dir_all(&slots).unwrap();
    std::fs::copy(image, slots.join("slot-a.ember")).unwrap();
    slots
}

/// `emberd --slot-dir SLOTS --pty --pty-link LINK`: restarting it keeps the link's path.
fn emberd_on_link(slots: &Path, link: &Path, extra: &[&str]) -> Running {
    let mut command = Command::new(binary("emberd"));
    command
        .arg("--slot-dir")
        .arg(slots)
        .arg("--pty")
        .arg("--pty-link")
        .arg(link)
        .args(extra);
    serve_on_pty(command).0
}

/// `ember ask` of the probe prompt: the reply's text.
fn ask(port: &Path) -> String {
    ask_at(port, 115_200)
}

/// [`ask`] at `baud`.
fn ask_at(port: &Path, baud: u32) -> String {
    let (prompt, _) = probe();
    let max_tokens = tiny_golden()["max_tokens"].to_string();
    let baud = baud.to_string();
    let output = ember_at(
        port,
        &[
            "ask",
            "--baud",
            &baud,
            "--max-tokens",
            &max_tokens,
            "--json",
            &prompt,
        ],
        "",
    );
    let stdout = stdout_of(&output);
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON");
    result["text"].as_str().expect("text").to_string()
}

/// `ember flash` to `ports`; the output, successful or not.
fn flash(image: &Path, ports: &[&Path], extra: &[&str]) -> Output {
    let mut command = Command::new(binary("ember"));
    command.arg("flash").arg(image).args(["--json", "--quiet"]);
    for port in ports {
        command.arg("--port").arg(port);
    }
    command.args(extra).output().expect("ember flash runs")
}

fn reports(output: &Output) -> Vec<serde_json::Value> {
    stdout_of(output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON report"))
        .collect()
}

fn manifest_hash(image: &Path) -> String {
    let bytes = std::fs::read(image).unwrap();
    let header = ImageHeader::parse(&bytes).unwrap();
    header
        .manifest_sha256
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn table(slots: &Path) -> SlotTable {
    SlotTable::decode(&std::fs::read(slots.join("slots.state")).expect("slots.state"))
        .expect("a valid slot table")
}

fn connect(port: &Path) -> Client {
    Client::connect(port, 115_200, Duration::from_secs(2)).expect("device answers")
}

/// The next event that is not a token or sentence (what flash requests are answered with).
fn answer(client: &mut Client) -> Event {
    loop {
        match client.recv(Duration::from_secs(10)).expect("an answer") {
            Event::Token { .. }
            | Event::SynthesizeStart
            | Event::SynthesizeChunk { .. }
            | Event::SynthesizeStop => {}
            event => return event,
        }
    }
}

fn begin_for(bytes: &[u8]) -> FlashBegin {
    FlashBegin {
        image_len: bytes.len() as u64,
        sha256: ember_image::sha256(bytes),
        header: bytes[..HEADER_LEN].iter().copied().collect(),
        signature: None,
    }
}

/// Raw chunks of a whole image (no compression), in order.
fn raw_chunks(bytes: &[u8]) -> Vec<FlashChunk> {
    let mut chunks = Vec::new();
    for (b, block) in bytes.chunks(FLASH_BLOCK as usize).enumerate() {
        for (c, data) in block.chunks(ember_core::flash::MAX_CHUNK).enumerate() {
            chunks.push(FlashChunk {
                offset: (b * FLASH_BLOCK as usize) as u64,
                at: (c * ember_core::flash::MAX_CHUNK) as u32,
                encoding: ember_core::flash::BlockEncoding::Raw,
                encoded_len: block.len() as u32,
                crc32: crc32(&[data]),
                data: data.iter().copied().collect(),
            });
        }
    }
    chunks
}

#[test]
fn a_flashed_image_chats_and_a_restart_keeps_it() {
    let (golden, other) = images();
    let slots = slot_dir("flash-chats", &other);
    let link = slots.parent().unwrap().join("tty");
    let (_, reply) = probe();
    let device = emberd_on_link(&slots, &link, &[]);
    assert_ne!(ask(&link), reply, "the other model must answer differently");

    let output = flash(&golden, &[&link], &[]);
    let report = &reports(&output)[0];
    assert_eq!(report["slot"], "B", "{report}");
    assert_eq!(report["model_hash"], manifest_hash(&golden).as_str());
    assert_eq!(
        report["image_bytes"],
        std::fs::metadata(&golden).unwrap().len()
    );
    assert!(
        report["compression_ratio"].as_f64().unwrap() < 1.0,
        "{report}"
    );
    assert_eq!(report["reconnects"], 0);
    assert_eq!(
        std::fs::read(slots.join("slot-b.ember")).unwrap(),
        std::fs::read(&golden).unwrap()
    );
    let state = table(&slots);
    assert_eq!(state.active, Slot::B);
    assert_eq!(state.last, Some(FlashOutcome::Activated));
    assert_eq!(state.incoming, None);
    // The device chats with the flashed model: llama.cpp's greedy reply.
    assert_eq!(ask(&link), reply);

    // A restarted device boots the confirmed slot.
    drop(device);
    let _device = emberd_on_link(&slots, &link, &[]);
    let client = connect(&link);
    assert_eq!(client.hello().slot, Some(Slot::B));
    assert_eq!(client.hello().last_flash, Some(FlashOutcome::Activated));
    drop(client);
    assert_eq!(ask(&link), reply);

    // Flashing the image it already serves sends nothing.
    let output = flash(&golden, &[&link], &[]);
    let report = &reports(&output)[0];
    assert_eq!(
        (report["slot"].as_str(), report["wire_bytes"].as_u64()),
        (Some("B"), Some(0))
    );
}

#[test]
fn bad_images_are_refused_and_the_device_keeps_its_model() {
    let (golden, other) = images();
    let slots = slot_dir("flash-refusals", &golden);
    let link = slots.parent().unwrap().join("tty");
    let (_, reply) = probe();
    // A board whose memory budget takes at most 8 MiB of image (40 MiB − 32 MiB of runtime).
    let board = slots.parent().unwrap().join("small.toml");
    let profile = std::fs::read_to_string(ember_e2e::repo_root().join("boards/x86_64-pty.toml"))
        .unwrap()
        .replace("memory_budget_mib = 2048", "memory_budget_mib = 40");
    assert!(profile.contains("memory_budget_mib = 40"), "{profile}");
    std::fs::write(&board, profile).unwrap();
    let _device = emberd_on_link(&slots, &link, &["--board", board.to_str().unwrap()]);
    let bytes = std::fs::read(&other).unwrap();
    let mut client = connect(&link);
    let refused = |client: &mut Client, request: Request, code: ErrorCode| {
        client.send(&request).unwrap();
        match answer(client) {
            Event::Error {
                code: got, detail, ..
            } => {
                assert_eq!(got, code, "{detail}");
                detail.to_string()
            }
            event => panic!("expected {code:?}, got {event:?}"),
        }
    };

    // Truncated: the declared length is shorter than the image's header says.
    let mut begin = begin_for(&bytes[..bytes.len() - 100]);
    begin.header = bytes[..HEADER_LEN].iter().copied().collect();
    let detail = refused(
        &mut client,
        Request::FlashBegin(begin),
        ErrorCode::ImageRejected,
    );
    assert!(detail.contains("truncated"), "{detail}");
    // Not an image at all.
    let mut begin = begin_for(&bytes);
    begin.header = [0x55u8; HEADER_LEN].into_iter().collect();
    let detail = refused(
        &mut client,
        Request::FlashBegin(begin),
        ErrorCode::ImageRejected,
    );
    assert!(detail.contains("EMBERIMG"), "{detail}");
    // Oversized for the board: a header declaring 100 MiB.
    let mut header = ImageHeader::parse(&bytes).unwrap();
    header.file_len = 100 << 20;
    let begin = FlashBegin {
        image_len: 100 << 20,
        sha256: [7; 32],
        header: header.to_bytes().into_iter().collect(),
        signature: None,
    };
    let detail = refused(
        &mut client,
        Request::FlashBegin(begin),
        ErrorCode::ImageTooLarge,
    );
    assert!(
        detail.contains("104857600") && detail.contains("memory budget"),
        "{detail}"
    );
    // Chunks and commits without a transfer.
    let chunk = raw_chunks(&bytes).remove(0);
    refused(
        &mut client,
        Request::FlashChunk(chunk.clone()),
        ErrorCode::NoTransfer,
    );
    refused(&mut client, Request::FlashCommit, ErrorCode::NoTransfer);

    // A chunk whose data does not match its CRC is refused and asked for again.
    client
        .send(&Request::FlashBegin(begin_for(&bytes)))
        .unwrap();
    assert_eq!(answer(&mut client), Event::FlashNext(Position::default()));
    let mut damaged = chunk.clone();
    damaged.data[10] ^= 1;
    refused(
        &mut client,
        Request::FlashChunk(damaged),
        ErrorCode::ChunkRejected,
    );
    assert_eq!(answer(&mut client), Event::FlashNext(Position::default()));
    // A chunk past a gap gets the position the device needs, once.
    let chunks = raw_chunks(&bytes);
    client
        .send(&Request::FlashChunk(chunks[2].clone()))
        .unwrap();
    assert_eq!(answer(&mut client), Event::FlashNext(Position::default()));
    // Committing early names what is missing.
    let detail = refused(&mut client, Request::FlashCommit, ErrorCode::NoTransfer);
    assert!(
        detail.contains(&format!("only 0 of the image's {}", bytes.len())),
        "{detail}"
    );
    client.send(&Request::FlashAbort).unwrap();
    assert_eq!(answer(&mut client), Event::Done);
    drop(client);

    // Wrongly hashed: every byte arrives, the declared SHA-256 is another image's.
    let mut prepared = ember_tools::flash::Prepared::new(&other, None, 3, true).unwrap();
    prepared.sha256[0] ^= 1;
    let options = ember_tools::flash::FlashOptions {
        baud: 115_200,
        max_baud: 115_200,
        window: ember_tools::flash::DEFAULT_WINDOW,
        patience: Duration::from_secs(20),
    };
    let bar = indicatif::ProgressBar::hidden();
    match ember_tools::flash::flash(&link, &prepared, &options, &bar) {
        Err(ember_tools::flash::FlashFailure::Refused { code, .. }) => {
            assert_eq!(code, ErrorCode::HashMismatch)
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    assert_eq!(
        table(&slots).incoming,
        None,
        "a mismatched transfer is forgotten"
    );

    // A truncated image file is refused by the host before anything is sent.
    let truncated_file = slots.parent().unwrap().join("truncated.ember");
    std::fs::write(&truncated_file, &bytes[..bytes.len() / 2]).unwrap();
    let output = flash(&truncated_file, &[&link], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("truncated"), "{stderr}");

    // Through all of it the device kept serving its model.
    assert_eq!(table(&slots).active, Slot::A);
    assert_eq!(ask(&link), reply);
}

#[test]
fn a_fixed_model_cannot_be_flashed() {
    let (golden, other) = images();
    let (_device, port) = ember_e2e::emberd_on_pty(&golden, &[]);
    let output = flash(&other, &[&port], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FlashUnavailable"), "{stderr}");
}

#[test]
fn signed_images_only_when_the_device_holds_a_key() {
    let (golden, other) = images();
    let slots = slot_dir("flash-signed", &other);
    let dir = slots.parent().unwrap().to_path_buf();
    let link = dir.join("tty");
    for name in ["trusted", "stranger"] {
        stdout_of(&ember(&["keygen", "-o", dir.join(name).to_str().unwrap()]));
    }
    let secret = std::fs::metadata(dir.join("trusted.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&secret.permissions()) & 0o777,
        0o600
    );
    std::fs::copy(dir.join("trusted.pub"), slots.join("flash.pub")).unwrap();
    let _device = emberd_on_link(&slots, &link, &[]);
    let image = dir.join("golden.ember");
    std::fs::copy(&golden, &image).unwrap();

    let refused = |output: Output, why: &str| {
        assert!(!output.status.success(), "{why}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("SignatureRejected"), "{why}: {stderr}");
        stderr.to_string()
    };
    let stderr = refused(flash(&image, &[&link], &[]), "unsigned");
    assert!(stderr.contains("unsigned"), "{stderr}");
    let signature = dir.join("golden.ember.sig");
    let sign = |key: &str| {
        stdout_of(&ember(&[
            "sign",
            image.to_str().unwrap(),
            "--key",
            dir.join(key).to_str().unwrap(),
        ]))
    };
    sign("stranger.key");
    refused(flash(&image, &[&link], &[]), "signed by another key");
    // A signature of another image by the trusted key does not cover this one.
    let other_copy = dir.join("other.ember");
    std::fs::copy(&other, &other_copy).unwrap();
    stdout_of(&ember(&[
        "sign",
        other_copy.to_str().unwrap(),
        "--key",
        dir.join("trusted.key").to_str().unwrap(),
        "-o",
        signature.to_str().unwrap(),
    ]));
    refused(flash(&image, &[&link], &[]), "another image's signature");
    assert_eq!(table(&slots).active, Slot::A);

    sign("trusted.key");
    let output = flash(&image, &[&link], &[]);
    assert_eq!(reports(&output)[0]["slot"], "B");
    assert_eq!(ask(&link), probe().1);
}

#[test]
fn an_image_that_fails_its_self_test_rolls_back() {
    let (golden, other) = images();
    let slots = slot_dir("flash-self-test", &golden);
    let link = slots.parent().unwrap().join("tty");
    let _device = emberd_on_link(&slots, &link, &[]);
    // The other model with the golden model's expected tokens: intact, hashed, and wrong about
    // what it generates (as an engine that computes differently would be).
    let bytes = std::fs::read(&other).unwrap();
    let mut manifest: Manifest = ember_image::parse(&bytes, true).unwrap();
    let expected = ember_image::parse(&std::fs::read(&golden).unwrap(), false).unwrap();
    assert_ne!(manifest.self_test.tokens, expected.self_test.tokens);
    manifest.self_test = expected.self_test;
    let bodies: Vec<(String, Vec<u8>)> = manifest
        .sections
        .iter()
        .map(|s| {
            let range = s.offset as usize..(s.offset + s.length) as usize;
            (s.name.clone(), bytes[range].to_vec())
        })
        .collect();
    let bodies: Vec<(&str, &[u8])> = bodies
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let wrong = ember_image::assemble(&mut manifest, &bodies);
    ember_image::parse(&wrong, true).expect("a structurally valid image");
    let path = slots.parent().unwrap().join("wrong.ember");
    std::fs::write(&path, wrong).unwrap();

    let output = flash(&path, &[&link], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SelfTestFailed") && stderr.contains("slot A stays active"),
        "{stderr}"
    );
    let state = table(&slots);
    assert_eq!(
        (state.active, state.last),
        (Slot::A, Some(FlashOutcome::SelfTestFailed))
    );
    let client = connect(&link);
    assert_eq!(
        client.hello().last_flash,
        Some(FlashOutcome::SelfTestFailed)
    );
    drop(client);
    assert_eq!(ask(&link), probe().1);
}

/// `ember line` at `baud` (with its extra arguments): the process, the device's end and the
/// host's end.
fn simulated_line(baud: u32, extra: &[&str]) -> (Running, PathBuf, PathBuf) {
    let mut child = Command::new(binary("ember"))
        .args(["line", "--baud", &baud.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
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

/// `emberd --slot-dir SLOTS --port DEVICE --baud BAUD EXTRA…`, with its log lines sent to
/// `log` as they come.
fn emberd_on_port(
    slots: &Path,
    device: &Path,
    baud: u32,
    extra: &[&str],
    log: Option<std::sync::mpsc::Sender<String>>,
) -> Running {
    let mut child = Command::new(binary("emberd"))
        .arg("--slot-dir")
        .arg(slots)
        .arg("--port")
        .arg(device)
        .args(["--baud", &baud.to_string()])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("emberd starts");
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(log) = &log {
                let _ = log.send(line);
            }
        }
    });
    Running(child)
}

/// `ember flash IMAGE --port PORT --baud BAUD`, running while the caller kills emberd; its JSON
/// report comes on stdout.
fn flash_in_background(image: &Path, port: &Path, baud: u32) -> std::process::Child {
    Command::new(binary("ember"))
        .arg("flash")
        .arg(image)
        .arg("--port")
        .arg(port)
        .args(["--baud", &baud.to_string()])
        .args(["--json", "--quiet", "--patience", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ember flash starts")
}

/// The device's state is always usable: the table reads, the active slot holds an image whose
/// every section matches its hash.
fn assert_bootable(slots: &Path) {
    let state = table(slots);
    let active = slots.join(format!("slot-{}.ember", state.active.as_str()));
    let bytes = std::fs::read(&active).unwrap();
    ember_image::parse(&bytes, true)
        .unwrap_or_else(|e| panic!("active slot {} is not a valid image: {e}", state.active));
}

/// A small generator of kill times; its seed is printed so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn killing_emberd_during_transfer_and_switch_never_loses_the_model() {
    let (golden, other) = images();
    let slots = slot_dir("flash-kills", &other);
    // 460800 baud: the tiny image takes about 4 s on the wire, time for many kills.
    const BAUD: u32 = 460_800;
    let (_line, device, host) = simulated_line(BAUD, &[]);
    let seed = std::env::var("EMBER_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill schedule seed {seed} (EMBER_KILL_SEED replays it)");
    let mut random = Lcg(seed);
    let mut emberd = Some(emberd_on_port(&slots, &device, BAUD, &[], None));
    let mut flashing = flash_in_background(&golden, &host, BAUD);

    // Kills at random moments of the transfer.
    let mut kills = 0;
    while kills < 12 && flashing.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(200 + random.below(700)));
        drop(emberd.take());
        kills += 1;
        assert_bootable(&slots);
        std::thread::sleep(Duration::from_millis(random.below(300)));
        emberd = Some(emberd_on_port(&slots, &device, BAUD, &[], None));
    }
    let output = flashing.wait_with_output().unwrap();
    let report = &reports(&output)[0];
    eprintln!("after {kills} kills: {report}");
    assert!(kills >= 3, "the transfer ended before the kills ({kills})");
    assert_eq!(report["slot"], "B");
    assert!(report["reconnects"].as_u64().unwrap() >= 1, "{report}");
    assert_bootable(&slots);
    assert_eq!(table(&slots).active, Slot::B);
    assert_eq!(ask_at(&host, BAUD), probe().1);

    // Kills during the switch: right after the image is verified, while the new model loads
    // and runs its self-test. Flashing the other model back to slot A.
    for round in 0..3 {
        let (tx, rx) = std::sync::mpsc::channel();
        drop(emberd.take());
        emberd = Some(emberd_on_port(&slots, &device, BAUD, &[], Some(tx)));
        let flashing = flash_in_background(&other, &host, BAUD);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(line) if line.contains("trial boot") => break,
                _ => {}
            }
        }
        drop(emberd.take());
        assert_bootable(&slots);
        let state = table(&slots);
        eprintln!("round {round}: killed during the switch: {state:?}");
        emberd = Some(emberd_on_port(&slots, &device, BAUD, &[], None));
        let output = flashing.wait_with_output().unwrap();
        let report = &reports(&output)[0];
        assert_eq!(report["slot"], "A", "{report}");
        assert_eq!(report["model_hash"], manifest_hash(&other).as_str());
        assert_bootable(&slots);
        // And back to the golden model for the next round.
        let output = flash(&golden, &[&host], &["--baud", &BAUD.to_string()]);
        assert_eq!(reports(&output)[0]["slot"], "B");
    }
    assert_eq!(ask_at(&host, BAUD), probe().1);
}

#[test]
fn corrupted_and_dropped_bytes_are_detected_and_resent() {
    let (golden, other) = images();
    let slots = slot_dir("flash-faults", &other);
    const BAUD: u32 = 921_600;
    let (_line, device, host) =
        simulated_line(BAUD, &["--corrupt-every", "20011", "--drop-every", "30011"]);
    let _emberd = emberd_on_port(&slots, &device, BAUD, &[], None);
    let output = flash(&golden, &[&host], &["--baud", "921600"]);
    let report = &reports(&output)[0];
    assert_eq!(report["slot"], "B", "{report}");
    assert!(report["resends"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(
        std::fs::read(slots.join("slot-b.ember")).unwrap(),
        std::fs::read(&golden).unwrap()
    );
}

#[test]
fn flashing_during_a_reply_does_not_disturb_it() {
    let (golden, other) = images();
    let slots = slot_dir("flash-during-chat", &golden);
    let host = slots.parent().unwrap().join("tty");
    let _emberd = emberd_on_link(&slots, &host, &[]);
    let (prompt, _) = probe();
    // The reference: the same reply with no flashing, from `ember generate --chat` on the image.
    let expected = stdout_of(&ember(&[
        "generate",
        "--model",
        golden.to_str().unwrap(),
        "--chat",
        "--prompt",
        &prompt,
        "--max-tokens",
        "300",
        "--json",
    ]));
    let expected: serde_json::Value =
        serde_json::from_str(expected.lines().last().unwrap()).unwrap();

    let bytes = std::fs::read(&other).unwrap();
    let chunks = raw_chunks(&bytes);
    let mut client = connect(&host);
    client
        .send(&Request::Chat(ChatRequest {
            session: 7,
            text: truncated(&prompt),
            options: ChatOptions {
                max_tokens: Some(300),
                ..ChatOptions::default()
            },
        }))
        .unwrap();
    client
        .send(&Request::FlashBegin(begin_for(&bytes)))
        .unwrap();
    for chunk in &chunks[..4] {
        client.send(&Request::FlashChunk(chunk.clone())).unwrap();
    }
    let (mut reply, mut acks_during_reply) = (String::new(), 0);
    loop {
        match client.recv(Duration::from_secs(30)).unwrap() {
            Event::Token { text } => reply.push_str(&text),
            Event::FlashNext(_) => acks_during_reply += 1,
            Event::End { .. } => break,
            event => panic!("unexpected {event:?}"),
        }
    }
    assert_eq!(reply, expected["text"].as_str().unwrap());
    assert!(
        acks_during_reply >= 2,
        "chunks were taken during the reply: {acks_during_reply}"
    );
    // The rest of the image, then the switch.
    for chunk in &chunks[4..] {
        client.send(&Request::FlashChunk(chunk.clone())).unwrap();
    }
    let mut last = Position::default();
    while last.offset < bytes.len() as u64 {
        if let Event::FlashNext(position) = answer(&mut client) {
            last = position;
        }
    }
    client.send(&Request::FlashCommit).unwrap();
    loop {
        match answer(&mut client) {
            Event::FlashStage { .. } => {}
            Event::FlashDone { slot, .. } => {
                assert_eq!(slot, Slot::B);
                break;
            }
            event => panic!("unexpected {event:?}"),
        }
    }
}

#[test]
fn the_line_switches_to_the_fastest_rate_that_gets_through() {
    let (golden, other) = images();
    let slots = slot_dir("flash-baud", &other);
    // Both ends start at 115200; the device may go to 3 Mbaud, the cable carries 921600.
    let (_line, device, host) = simulated_line(115_200, &["--max-baud", "921600"]);
    let _emberd = emberd_on_port(&slots, &device, 115_200, &["--max-baud", "3000000"], None);
    let client = connect(&host);
    assert_eq!(client.hello().max_baud, 3_000_000);
    drop(client);
    let output = flash(&golden, &[&host], &[]);
    let report = &reports(&output)[0];
    // 3 Mbaud garbles, both ends fall back; 921600 gets through.
    assert_eq!(report["baud"], 921_600, "{report}");
    assert_eq!(report["slot"], "B");
    // After the session the device is back at its own rate.
    assert_eq!(ask_at(&host, 115_200), probe().1);
}

#[test]
fn a_fleet_is_flashed_at_once() {
    let (golden, other) = images();
    let devices: Vec<(PathBuf, PathBuf)> = ["flash-fleet-1", "flash-fleet-2", "flash-fleet-3"]
        .iter()
        .map(|name| {
            let slots = slot_dir(name, &other);
            let link = slots.parent().unwrap().join("tty");
            (slots, link)
        })
        .collect();
    let _running: Vec<Running> = devices
        .iter()
        .map(|(slots, link)| emberd_on_link(slots, link, &[]))
        .collect();
    let ports: Vec<&Path> = devices.iter().map(|(_, link)| link.as_path()).collect();
    let output = flash(&golden, &ports, &[]);
    let mut reported: Vec<String> = reports(&output)
        .iter()
        .map(|r| {
            assert_eq!(r["slot"], "B", "{r}");
            r["port"].as_str().unwrap().to_string()
        })
        .collect();
    reported.sort();
    let mut expected: Vec<String> = ports.iter().map(|p| p.display().to_string()).collect();
    expected.sort();
    assert_eq!(reported, expected);
    for port in ports {
        assert_eq!(ask(port), probe().1);
    }
}
