//! One module per command, each owning its arguments, its run function and its output; and what
//! they share: the help listing, printing results, threads, the model to run, sampling and
//! device flags.

pub mod ask;
pub mod bench;
pub mod chat;
pub mod completions;
pub mod export_onnx;
pub mod fetch;
pub mod flash;
pub mod generate;
pub mod inspect;
pub mod keygen;
pub mod line;
pub mod package;
pub mod quantize;
pub mod serve;
pub mod sign;
pub mod synth;

use anyhow::{Context, Result};
use ember_core::sampler::SamplingConfig;
use serde::Serialize;
use std::fmt::{Display, Write as _};
use std::path::{Path, PathBuf};

/// Groups of commands for `ember --help`: (heading, [(command and flags, summary or `None` for
/// the command's own)]).
pub type Groups = &'static [(
    &'static str,
    &'static [(&'static str, Option<&'static str>)],
)];

/// The `ember --help` listing of `groups`, each entry with its summary.
pub fn grouped_listing(command: &clap::Command, groups: Groups) -> String {
    let width = groups
        .iter()
        .flat_map(|(_, entries)| entries.iter().map(|(name, _)| name.len()))
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (heading, entries) in groups {
        let _ = writeln!(out, "{heading}:");
        for (entry, summary) in *entries {
            let name = entry.split(' ').next().unwrap_or_default();
            let about = summary.map(str::to_string).or_else(|| {
                command
                    .find_subcommand(name)
                    .and_then(|sub| sub.get_about())
                    .map(|about| about.to_string())
            });
            let _ = writeln!(out, "  {entry:<width$}  {}", about.unwrap_or_default());
        }
        out.push('\n');
    }
    out
}

/// Lets a write to a closed stdout end the process silently (the default for Unix tools, which
/// Rust turns off: its `println!` would panic instead). `ember … | head -1` then stops quietly.
pub fn exit_quietly_on_closed_stdout() {
    sigpipe::reset();
}

/// Prints a command's result on stdout: one JSON object with `json`, else the text for people.
pub fn emit<R: Serialize + Display>(result: &R, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
    } else {
        println!("{result}");
    }
    Ok(())
}

/// Starts the worker pool with `threads` threads (default: all cores) and returns the count.
pub fn use_threads(threads: Option<usize>) -> Result<usize> {
    let count = match threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(count)
        .build_global()
        .context("cannot start worker threads")?;
    Ok(count)
}

/// The model to run: `model`, or else the default model, fetched and quantized into Ember's
/// cache on first use (progress on stderr).
pub fn model_or_default(model: Option<&Path>, threads: usize) -> Result<PathBuf> {
    match model {
        Some(path) => Ok(path.to_path_buf()),
        None => Ok(ember_models::default::default_model(threads)?.image),
    }
}

/// The help text of a `--model` that falls back to the default model.
pub const MODEL_HELP: &str = "Model file: an Ember image (int8 engine) or a GGUF (f32 reference). \
Default: SmolLM2-135M-Instruct, fetched and quantized into $EMBER_HOME on first use";

/// Sampling settings shared by `chat` and `generate`.
#[derive(clap::Args)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens (0: no limit beyond 256 candidates).
    #[arg(long, default_value_t = 40)]
    pub top_k: u32,
    /// Sample only among the most likely tokens whose probabilities add up to P.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Penalty for repeating any of the last 64 tokens (1.0: none).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The settings, checked.
    pub fn config(&self) -> Result<SamplingConfig> {
        let config = SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repeat_penalty,
            penalty_window: 64,
            seed: self.seed,
        };
        config.validate().context("invalid sampling settings")?;
        Ok(config)
    }
}

/// A device running `emberd`, as the alternative to --model.
#[derive(clap::Args)]
pub struct DeviceArgs {
    /// Serial port of a device running `emberd` (instead of --model).
    #[arg(long)]
    pub port: Option<PathBuf>,
    /// Baud rate of --port.
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
}
