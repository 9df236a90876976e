//! `ember synth`: write the tiny synthetic test model.

use anyhow::Result;
use ember_tools::synth;
use std::path::PathBuf;

/// Write the tiny synthetic test model (a random Llama-family GGUF, the same for a seed).
#[derive(clap::Args)]
pub struct Args {
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Seed of the weights.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Runs `ember synth`.
pub fn run(args: Args) -> Result<()> {
    let bytes = synth::tiny_model(args.seed)?;
    ember_image::write_atomically(&args.output, &bytes)?;
    super::emit(
        &format!(
            "wrote {} ({} bytes, seed {})",
            args.output.display(),
            bytes.len(),
            args.seed
        ),
        false,
    )
}
