//! `ember quantize`: a GGUF model → an Ember image, and how closely the int8 engine follows the
//! f32 reference on it.

use anyhow::{Context, Result};
use ember_gguf::GgufFile;
use ember_image::Image;
use ember_models::quantize::{self, Quality};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Turn a GGUF model into an Ember image: quantized weights + the ONNX graph that runs them.
///
/// --scheme int8 (default): Q8_0 and Q4_0 weights are stored exactly; other matrices (Q4_1, F16,
/// F32, …) are re-quantized to symmetric int8 per block of 32.
///
/// --scheme q4: the layers' matrices in 4-bit blocks of 32 (value = d·q + m): Q4_0 and Q4_1
/// blocks are stored exactly, others quantized to Q4_1 first; the token embedding stays int8.
/// Smaller and faster where memory bandwidth is short; from a Q4_0/Q4_1 GGUF it loses nothing
/// more, from finer weights (F16, Q8_0, …) it loses more than int8.
///
/// The report runs Ember's engine on the image (int8 activations) against the f32 reference on
/// the GGUF, teacher-forced over a built-in text: top-1 agreement, mean KL divergence, largest
/// logit error.
#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model.
    model: PathBuf,
    /// The image to write (written to a `.part` file, renamed when complete).
    #[arg(short, long)]
    output: PathBuf,
    /// How the weights are stored: int8 or q4.
    #[arg(long, value_enum, default_value_t = SchemeArg::Int8)]
    scheme: SchemeArg,
    /// The image's version, a release counter: a device refuses an image whose version is
    /// lower than the one it serves (unless SLOT_DIR/allow-downgrade exists on it). 0: none
    /// (as images made before versions existed).
    #[arg(long, value_name = "N", default_value_t = 0)]
    image_version: u32,
    /// Longest context the image serves, in tokens (default: the model's, at most 8192). The
    /// graph's RoPE tables grow with it (Gemma 3's heads of 256: 4 MB per table at 8192).
    #[arg(long, value_name = "TOKENS")]
    context: Option<usize>,
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

/// `--scheme`'s values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemeArg {
    /// Symmetric int8 blocks of 32.
    Int8,
    /// 4-bit blocks of 32 for the layers' matrices (GGUF Q4_0/Q4_1 exactly).
    Q4,
}

impl From<SchemeArg> for quantize::Scheme {
    fn from(scheme: SchemeArg) -> Self {
        match scheme {
            SchemeArg::Int8 => quantize::Scheme::Int8,
            SchemeArg::Q4 => quantize::Scheme::Q4,
        }
    }
}

/// What `ember quantize` made.
#[derive(Serialize)]
struct Quantized {
    image: PathBuf,
    bytes: u64,
    tensors: usize,
    scheme: &'static str,
    image_version: u32,
    seconds: f64,
    quality: Option<Quality>,
}

impl std::fmt::Display for Quantized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote {} ({} bytes, {} tensors, {}, image version {}) in {:.1}s",
            self.image.display(),
            self.bytes,
            self.tensors,
            self.scheme,
            self.image_version,
            self.seconds
        )?;
        if let Some(q) = &self.quality {
            write!(
                f,
                "\nquality of Ember's engine on the image vs the f32 reference on the GGUF ({} teacher-forced positions): top-1 agreement {:.1}%, mean KL {:.2e} nats, max logit error {:.3e}",
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
    let scheme = quantize::Scheme::from(args.scheme);
    let bytes = quantize::quantize(
        &gguf,
        &args.output,
        scheme,
        (args.image_version, args.context),
        !args.quiet,
        threads,
    )?;
    let image = Image::open(&args.output)?;
    image.verify()?;
    let seconds = start.elapsed().as_secs_f64();
    let quality = if args.no_report {
        None
    } else {
        if !args.quiet {
            eprintln!(
                "measuring Ember's engine on the image against the f32 reference on the GGUF…"
            );
        }
        Some(quantize::measure_quality(&gguf, &image, threads)?)
    };
    let report = Quantized {
        image: args.output,
        bytes,
        tensors: image.manifest().tensors.len(),
        scheme: scheme.name(),
        image_version: image.manifest().image_version,
        seconds,
        quality,
    };
    super::emit(&report, args.json)
}
