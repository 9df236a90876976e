//! `ember export-onnx`: an image's graph and weights as files onnxruntime runs.

use anyhow::Result;
use ember_image::Image;
use std::path::PathBuf;

/// Write an image's ONNX graph and weights for onnxruntime.
///
/// Writes `model.onnx` + `model.weights` in a directory, for onnxruntime (or any engine with the
/// com.microsoft contrib ops) to run: the image's graph, and its weights in the standard layout
/// of those ops (the image interleaves int8 rows for Ember's kernels).
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
    let written: Vec<String> = ember_tools::onnx::export(&image, &args.output)?
        .into_iter()
        .map(|(target, bytes)| format!("wrote {} ({bytes} bytes)", target.display()))
        .collect();
    super::emit(&written.join("\n"), false)
}
