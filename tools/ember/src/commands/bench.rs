//! `ember bench`: speed and memory of a model run here beside llama.cpp and onnxruntime, or of a
//! device as a voice kiosk sees it.

use super::DeviceArgs;
use anyhow::Result;
use ember_tools::{bench, remote};
use std::path::PathBuf;

/// Measure speed and memory here, beside llama.cpp and onnxruntime.
///
/// Load time, time to first token, prefill and decode speed (short and ~400-token context) and
/// memory, at each --threads count (default: 1 and all cores); in the same run, on the same
/// prompt ids and thread counts, two peers when installed: llama.cpp (`pip install xllamacpp`)
/// on the GGUF, and onnxruntime (`pip install onnxruntime numpy`) on the image's graph as
/// `ember export-onnx` writes it (into a temporary directory, its MatMulNBits set to
/// accuracy_level 4: int8 activations, as Ember's kernels; Ember images only), with the
/// Ember ÷ peer ratios. One table section per thread count.
///
/// Without --model: the default model's image, and llama.cpp on the GGUF it was made from.
/// With --port instead: a device running `emberd` on that serial line — time to first token,
/// time to first sentence and how fast a cancel is acknowledged, mid-reply and during a
/// ~600-token prompt's prefill (a long system prompt, set for the measurement and reset after),
/// as seen on the host (median of --runs).
#[derive(clap::Args)]
pub struct Args {
    #[arg(short, long, conflicts_with = "port", help = super::MODEL_HELP)]
    model: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Replies measured on --port.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// GGUF for llama.cpp (default: the model itself when it is a GGUF, or the default model's).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Tokens generated per measurement.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Worker threads for Ember and the peers: one count, or several separated by commas
    /// (`1,2`), each measured in turn (default: 1 and all cores).
    #[arg(long, value_delimiter = ',', num_args = 1)]
    threads: Vec<usize>,
    /// Also time every op of the int8 engine while it decodes --decode-tokens tokens after the
    /// short prompt (at the largest --threads), and print the time per token by op kind and the
    /// ops run per token.
    #[arg(long, conflicts_with = "port")]
    profile: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs `ember bench`.
pub fn run(args: Args) -> Result<()> {
    if let Some(port) = &args.device.port {
        let report = remote::bench(
            port,
            args.device.baud,
            args.runs,
            bench::SERIAL_PROMPT,
            args.json,
        )?;
        return super::emit(&report, args.json);
    }
    let mut counts = args.threads;
    if counts.is_empty() {
        let all = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        counts = vec![1, all];
    }
    counts.sort_unstable();
    counts.dedup();
    if counts.first() == Some(&0) {
        anyhow::bail!("--threads must be at least 1");
    }
    // The pool for what runs before the measurements (the default model's first quantization).
    let threads = super::use_threads(counts.last().copied())?;
    let (model, gguf) = match args.model {
        Some(model) => (model, args.gguf),
        None => {
            let prepared = ember_models::default::default_model(threads)?;
            let gguf = args
                .gguf
                .or_else(|| prepared.gguf.exists().then_some(prepared.gguf));
            (prepared.image, gguf)
        }
    };
    let report = bench::bench(
        &model,
        gguf.as_deref(),
        &counts,
        args.decode_tokens,
        args.profile,
    )?;
    super::emit(&report, args.json)
}
