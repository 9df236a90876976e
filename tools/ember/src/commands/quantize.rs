//! `ember quantize`: a GGUF model → an Ember image, and how closely the int8 engine follows the
//! f32 reference on it.

use anyhow::{Context, Result};
use ember_gguf::GgufFile;
use ember_image::Image;
use ember_models::quantize::{self, Quality};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Turn a GGUF model into an Ember image: int8 weights + the ONNX graph that runs them.
///
/// Q8_0 and Q4_0 weights are stored exactly; other matrices (Q4_1, F16, F32, …) are
/// re-quantized to symmetric int8 per block of 32. The report runs the int8 engine on the image
/// against the f32 reference on the GGUF, teacher-forced over a built-in text: top-1 agreement,
/// mean KL divergence, largest logit error.
#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model.
    model: PathBuf,
    /// The image to write (written to a `.part` file, renamed when complete).
    #[arg(short, long)]
    output: PathBuf,
    /// Skip the quality report.
    #[arg(long)]
    no_report: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Worker threads for the self-test and the quality report (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    json: bool,
}

/// What `ember quantize` made.
#[derive(Serialize)]
struct Quantized {
    image: PathBuf,
    bytes: u64,
    tensors: usize,
    scheme: &'static str,
    seconds: f64,
    quality: Option<Quality>,
}

impl std::fmt::Display for Quantized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote {} ({} bytes, {} tensors, {}) in {:.1}s",
            self.image.display(),
            self.bytes,
            self.tensors,
            self.scheme,
            self.seconds
        )?;
        if let Some(q) = &self.quality {
            write!(
                f,
                "\nquality of the int8 engine vs the f32 reference on the GGUF ({} teacher-forced positions): top-1 agreement {:.1}%, mean KL {:.2e} nats, max logit error {:.3e}",
                q.positions,
                q.top1_agreement * 100.0,
                q.mean_kl,
                q.max_logit_error
            )?;
        }
        Ok(())
    }
}

/// Runs `ember quantize`.
pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let gguf = GgufFile::open(&args.model)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let threads = super::use_threads(args.threads)?;
    let bytes = quantize::quantize(&gguf, &args.output, !args.quiet, threads)?;
    let image = Image::open(&args.output)?;
    image.verify()?;
    let seconds = start.elapsed().as_secs_f64();
    let quality = if args.no_report {
        None
    } else {
        if !args.quiet {
            eprintln!("measuring the int8 engine against the f32 reference on the GGUF…");
        }
        Some(quantize::measure_quality(&gguf, &image, threads)?)
    };
    let report = Quantized {
        image: args.output,
        bytes,
        tensors: image.manifest().tensors.len(),
        scheme: quantize::SCHEME,
        seconds,
        quality,
    };
    super::emit(&report, args.json)
}
