//! `ember synth`: write the tiny synthetic test model.

use anyhow::Result;
use ember_core::image::Family;
use ember_tools::synth;
use std::path::PathBuf;

/// Write a tiny synthetic test model (a random GGUF of a family Ember runs, the same for a
/// seed).
#[derive(clap::Args)]
pub struct Args {
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Seed of the weights.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Architecture: llama (SmolLM2's), qwen2 (Q/K/V biases), qwen3 (per-head Q/K norms) or
    /// gemma3 (Gemma's block, sliding-window layers).
    #[arg(long, default_value = "llama", value_parser = parse_family)]
    arch: Family,
}

fn parse_family(name: &str) -> Result<Family, String> {
    Family::from_name(name)
        .ok_or_else(|| format!("{name:?} is not one of llama, qwen2, qwen3, gemma3"))
}

/// Runs `ember synth`.
pub fn run(args: Args) -> Result<()> {
    let bytes = synth::tiny_model(args.seed, args.arch)?;
    ember_image::write_atomically(&args.output, &bytes)?;
    super::emit(
        &format!(
            "wrote {} ({} bytes, {}, seed {})",
            args.output.display(),
            bytes.len(),
            args.arch.name(),
            args.seed
        ),
        false,
    )
}
