//! A voice kiosk on Ember: each line on stdin is an utterance (what speech-to-text heard), the
//! device's reply comes back sentence by sentence and is spoken as each sentence arrives, and a
//! new utterance during a reply barges in: cancel, wait for the device's acknowledgement, then
//! silence the speech still queued.
//!
//! Stdout carries the events shaped like Wyoming's streaming TTS (one JSON object per line:
//! `synthesize-start`, `synthesize-chunk` with the sentence, `synthesize-stop`), so it can feed a
//! Wyoming TTS service. Speech: `espeak-ng` (Debian package `espeak-ng`) through the sound card,
//! or one WAV file per sentence with `--wav-dir`, or none with `--no-speech`.
//!
//! ```sh
//! emberd --model smollm2.ember --pty          # prints /dev/pts/N
//! cargo run --release -p ember-tools --example voice_kiosk -- --port /dev/pts/N
//! ```

use anyhow::{Context, Result, bail};
use clap::Parser;
use ember_core::protocol::{ChatOptions, Event, Request};
use ember_serial::ClientError;
use ember_tools::remote;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Speak Ember's replies as they stream; a new line on stdin interrupts.
#[derive(Parser)]
struct Args {
    /// Serial port of a device running `emberd`.
    #[arg(long)]
    port: PathBuf,
    /// Baud rate.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Write each sentence as a WAV file here (`espeak-ng -w`) instead of playing it.
    #[arg(long, conflicts_with = "no_speech")]
    wav_dir: Option<PathBuf>,
    /// Do not speak; only print the events.
    #[arg(long)]
    no_speech: bool,
    /// Longest reply, in tokens (default: the device's).
    #[arg(short = 'n', long)]
    max_tokens: Option<u32>,
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

fn wyoming(kind: &str, text: Option<&str>) {
    let event = match text {
        Some(text) => serde_json::json!({ "type": kind, "data": { "text": text } }),
        None => serde_json::json!({ "type": kind }),
    };
    println!("{event}");
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.wav_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut client = remote::connect(&args.port, args.baud, false)?;
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
    let session = remote::new_session();
    let mut replying = false;
    let mut input_open = true;
    loop {
        match heard.try_recv() {
            Ok(utterance) if !utterance.trim().is_empty() => {
                if replying {
                    // Barge-in: stop the model first, wait for its word, then flush speech.
                    client.send(&Request::Cancel)?;
                    client.until(
                        Duration::from_secs(5),
                        |e| matches!(e, Event::CancelAck { .. }),
                        &mut |_| {},
                    )?;
                    wyoming("synthesize-stop", None);
                    eprintln!("voice_kiosk: interrupted");
                }
                speaker.silence();
                let options = ChatOptions {
                    sentences: true,
                    max_tokens: args.max_tokens,
                    ..ChatOptions::default()
                };
                client.send(&remote::chat_request(session, utterance.trim(), options)?)?;
                replying = true;
            }
            Ok(_) => {}
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => input_open = false,
        }
        if !input_open && !replying && !speaker.busy() {
            break;
        }
        match client.recv(Duration::from_millis(20)) {
            Ok(Event::SynthesizeStart) => wyoming("synthesize-start", None),
            Ok(Event::SynthesizeChunk { text }) => {
                wyoming("synthesize-chunk", Some(&text));
                speaker.say(&text);
            }
            Ok(Event::SynthesizeStop) => wyoming("synthesize-stop", None),
            Ok(Event::End { reason, .. }) => {
                replying = false;
                eprintln!("voice_kiosk: reply ended ({})", reason.as_str());
            }
            Ok(Event::Error { code, detail, .. }) => {
                eprintln!(
                    "voice_kiosk: {}",
                    ember_serial::describe_error(code, &detail)
                )
            }
            Ok(_) => {}
            Err(ClientError::Timeout(_)) => {
                let _ = speaker.busy();
            }
            Err(e) => bail!(e),
        }
    }
    client.goodbye(Duration::from_secs(5))?;
    Ok(())
}
