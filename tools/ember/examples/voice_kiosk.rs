//! A voice kiosk on Ember's Wyoming service (`ember serve --wyoming`), the way Home Assistant's
//! voice pipeline uses it: each line on stdin is an utterance (what speech-to-text heard), sent
//! as a Wyoming `transcript`; the reply comes back as `handled-start`, one `handled-chunk` per
//! sentence, `handled` (the whole reply again) and `handled-stop`, and each sentence is spoken
//! as it arrives. A new utterance during
//! a reply barges in: the service cancels the reply on the device and ends it, and the speech
//! still queued is silenced.
//!
//! Stdout carries the Wyoming events received, one JSON object per line. Speech: `espeak-ng`
//! (Debian package `espeak-ng`) through the sound card, or one WAV file per sentence with
//! `--wav-dir`, or none with `--no-speech`.
//!
//! ```sh
//! ember serve --port /dev/ttyUSB0 --wyoming tcp://127.0.0.1:10400     # or --model smollm2.ember
//! cargo run --release -p ember-tools --example voice_kiosk -- --wyoming tcp://127.0.0.1:10400
//! ```

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Speak Ember's replies as they stream; a new line on stdin interrupts.
#[derive(Parser)]
struct Args {
    /// The Wyoming handle service (`ember serve --wyoming`): tcp://HOST:PORT.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    wyoming: String,
    /// Write each sentence as a WAV file here (`espeak-ng -w`) instead of playing it.
    #[arg(long, conflicts_with = "no_speech")]
    wav_dir: Option<PathBuf>,
    /// Do not speak; only print the events.
    #[arg(long)]
    no_speech: bool,
}

/// Speaks sentences one after the other; can be silenced at once.
struct Speaker {
    wav_dir: Option<PathBuf>,
    enabled: bool,
    queue: Vec<String>,
    current: Option<Child>,
    spoken: usize,
}

impl Speaker {
    fn say(&mut self, sentence: &str) {
        if self.enabled {
            self.queue.push(sentence.to_string());
        }
        self.pump()
            .unwrap_or_else(|e| eprintln!("voice_kiosk: {e:#}"));
    }

    /// Starts the next sentence when the previous one is done.
    fn pump(&mut self) -> Result<()> {
        if let Some(child) = &mut self.current {
            if child.try_wait()?.is_none() {
                return Ok(());
            }
            self.current = None;
        }
        if self.queue.is_empty() {
            return Ok(());
        }
        let sentence = self.queue.remove(0);
        let mut command = Command::new("espeak-ng");
        if let Some(dir) = &self.wav_dir {
            command
                .arg("-w")
                .arg(dir.join(format!("{:04}.wav", self.spoken)));
        }
        command.arg("--").arg(&sentence);
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run espeak-ng (apt-get install espeak-ng, or use --no-speech)")?;
        self.current = Some(child);
        self.spoken += 1;
        Ok(())
    }

    /// Barge-in: drop what is queued and stop what is playing.
    fn silence(&mut self) {
        self.queue.clear();
        if let Some(mut child) = self.current.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn busy(&mut self) -> bool {
        let _ = self.pump();
        self.current.is_some() || !self.queue.is_empty()
    }
}

/// Writes a Wyoming event: its header line, then its data.
fn send_event(stream: &mut TcpStream, kind: &str, data: serde_json::Value) -> Result<()> {
    let data = data.to_string();
    let header = serde_json::json!({"type": kind, "version": "1.10.2", "data_length": data.len()});
    stream.write_all(format!("{header}\n{data}").as_bytes())?;
    Ok(())
}

/// Reads Wyoming events (header line, data, payload) until the stream ends.
fn read_events(stream: TcpStream, events: mpsc::Sender<serde_json::Value>) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        let mut event: serde_json::Value = serde_json::from_str(&line)?;
        line.clear();
        let length = |field: &str| event[field].as_u64().unwrap_or(0) as usize;
        let (data_length, payload_length) = (length("data_length"), length("payload_length"));
        if data_length > 0 {
            let mut data = vec![0; data_length];
            reader.read_exact(&mut data)?;
            event["data"] = serde_json::from_slice(&data)?;
        }
        std::io::copy(
            &mut (&mut reader).take(payload_length as u64),
            &mut std::io::sink(),
        )?;
        if events.send(event).is_err() {
            break;
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.wav_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let address = args.wyoming.strip_prefix("tcp://").unwrap_or(&args.wyoming);
    let mut stream = TcpStream::connect(address)
        .with_context(|| format!("cannot connect to the Wyoming service at {address}"))?;
    let (events, arrived) = mpsc::channel();
    let reader = stream.try_clone()?;
    std::thread::spawn(move || {
        if let Err(e) = read_events(reader, events) {
            eprintln!("voice_kiosk: {e:#}");
        }
    });
    let mut speaker = Speaker {
        wav_dir: args.wav_dir.clone(),
        enabled: !args.no_speech,
        queue: Vec::new(),
        current: None,
        spoken: 0,
    };
    // Utterances arrive on their own thread, whenever the person speaks.
    let (utterances, heard) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if utterances.send(line).is_err() {
                break;
            }
        }
    });
    let mut replying = false;
    // Whether the reply came as `handled-chunk`s (its `handled` then repeats them).
    let mut streamed = false;
    let mut input_open = true;
    loop {
        match heard.try_recv() {
            Ok(utterance) if !utterance.trim().is_empty() => {
                if replying {
                    // Barge-in: the service cancels the reply and ends it; flush the speech.
                    eprintln!("voice_kiosk: interrupted");
                }
                speaker.silence();
                let transcript = serde_json::json!({"text": utterance.trim(), "language": "en"});
                send_event(&mut stream, "transcript", transcript)?;
                replying = true;
                streamed = false;
            }
            Ok(_) => {}
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => input_open = false,
        }
        if !input_open && !replying && !speaker.busy() {
            break;
        }
        match arrived.recv_timeout(Duration::from_millis(20)) {
            Ok(event) => {
                println!("{event}");
                let text = event["data"]["text"].as_str().unwrap_or_default();
                match event["type"].as_str().unwrap_or_default() {
                    "handled-chunk" => {
                        speaker.say(text);
                        streamed = true;
                    }
                    // The whole reply, for clients that do not stream.
                    "handled" if !streamed => {
                        speaker.say(text);
                        replying = false;
                    }
                    "handled-stop" => replying = false,
                    "not-handled" => {
                        eprintln!("voice_kiosk: not handled: {text}");
                        replying = false;
                    }
                    _ => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = speaker.busy();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the Wyoming service closed"),
        }
    }
    Ok(())
}
