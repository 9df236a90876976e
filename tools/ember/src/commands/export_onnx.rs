//! `ember export-onnx`: an image's graph and weights as files onnxruntime runs.

use anyhow::{Context, Result};
use ember_image::Image;
use std::path::PathBuf;

/// Write an image's ONNX graph and weights for onnxruntime.
///
/// Writes `model.onnx` + `model.weights` in a directory, for onnxruntime (or any engine with the
/// com.microsoft contrib ops) to run.
#[derive(clap::Args)]
pub struct Args {
    /// The image.
    image: PathBuf,
    /// Output directory (created if missing).
    #[arg(short, long)]
    output: PathBuf,
}

/// Runs `ember export-onnx`.
pub fn run(args: Args) -> Result<()> {
    let image = Image::open(&args.image)?;
    image.verify()?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let graph = image.section(ember_image::GRAPH_SECTION)?;
    let weights = image.section(ember_image::WEIGHTS_SECTION)?;
    let mut written = Vec::new();
    for (name, section) in [
        ("model.onnx", graph),
        (ember_tract::graph::WEIGHTS_FILE, weights),
    ] {
        let target = args.output.join(name);
        ember_image::write_atomically(&target, image.section_bytes(section))?;
        written.push(format!(
            "wrote {} ({} bytes)",
            target.display(),
            section.length
        ));
    }
    super::emit(&written.join("\n"), false)
}
