//! `ember export-onnx`: an image's graph and weights as files onnxruntime runs.

use anyhow::{Context, Result};
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
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let graph = image.section(ember_image::GRAPH_SECTION)?;
    let weights = image.section(ember_image::WEIGHTS_SECTION)?;
    // The image interleaves int8 rows for Ember's kernels; onnxruntime reads them row-major,
    // at the same offsets.
    let mut standard = image.section_bytes(weights).to_vec();
    for entry in &image.manifest().tensors {
        if image.manifest().sections.get(entry.section as usize) != Some(weights) {
            continue;
        }
        let range = entry.offset as usize..(entry.offset + entry.length) as usize;
        let tensor = ember_image::standard_layout(entry, &standard[range.clone()]);
        standard[range].copy_from_slice(&tensor);
    }
    let mut written = Vec::new();
    for (name, bytes) in [
        ("model.onnx", image.section_bytes(graph)),
        (ember_tract::graph::WEIGHTS_FILE, &standard[..]),
    ] {
        let target = args.output.join(name);
        ember_image::write_atomically(&target, bytes)?;
        written.push(format!(
            "wrote {} ({} bytes)",
            target.display(),
            bytes.len()
        ));
    }
    super::emit(&written.join("\n"), false)
}
