//! `ember ask`: one question to a device; the reply streams to stdout.

use anyhow::{Result, bail};
use ember_core::protocol::{ChatOptions, EndReason};
use ember_serial::Recovery;
use ember_tools::remote;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Ask a device one question; the reply streams to stdout.
///
/// The device runs `emberd` on the serial line --port. With --json: one JSON object with text,
/// sentences, finish reason and stats.
#[derive(clap::Args)]
pub struct Args {
    /// Serial port of a device running `emberd`.
    #[arg(long)]
    port: PathBuf,
    /// Baud rate.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// The question.
    question: String,
    /// System prompt (default: the device's).
    #[arg(long)]
    system: Option<String>,
    /// Longest reply, in tokens (default: the device's).
    #[arg(short = 'n', long)]
    max_tokens: Option<u32>,
    /// Sampling temperature (default: the device's).
    #[arg(long)]
    temperature: Option<f32>,
    /// Seed of the sampler (default: the device's).
    #[arg(long)]
    seed: Option<u64>,
    /// End the reply before this text (repeatable, at most 4).
    #[arg(long)]
    stop: Vec<String>,
    /// Also ask for the reply as sentences (for text-to-speech; shown with --json).
    #[arg(long)]
    sentences: bool,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    json: bool,
    /// Milliseconds the reply may stay silent before asking the device what became of the
    /// question (one it never got is sent again).
    #[arg(long, default_value_t = 10_000)]
    silence_ms: u64,
}

/// Runs `ember ask`.
pub fn run(args: Args) -> Result<()> {
    let options = remote::RemoteOptions {
        chat: ChatOptions {
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            seed: args.seed,
            stop: remote::stops(&args.stop)?,
            sentences: args.sentences,
            ..ChatOptions::default()
        },
        system: args.system.clone(),
    };
    let json = args.json;
    let mut stdout = std::io::stdout();
    let received = remote::ask(
        &args.port,
        args.baud,
        &args.question,
        options,
        Recovery {
            silence: Duration::from_millis(args.silence_ms),
            ..Recovery::default()
        },
        json,
        &mut |text| {
            if !json {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
        },
    )?;
    if json {
        super::emit(&serde_json::to_value(&received)?, true)?;
    } else {
        println!();
        for error in &received.errors {
            eprintln!("{error}");
        }
    }
    for warning in &received.warnings {
        eprintln!("warning: {warning}");
    }
    if received.finish == EndReason::Error.as_str() {
        bail!("the device could not answer");
    }
    Ok(())
}
