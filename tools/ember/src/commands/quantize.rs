//! `ember quantize`: a GGUF model or a Hugging Face model directory → an Ember image, and how
//! closely the int8 engine follows the f32 reference on it.

use anyhow::{Context, Result};
use ember_gguf::GgufFile;
use ember_image::Image;
use ember_models::quantize::{self, Quality};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Turn a GGUF model or a Hugging Face model directory into an Ember image: quantized weights +
/// the ONNX graph that runs them.
///
/// A directory holds config.json, model.safetensors (or model.safetensors.index.json and its
/// shards; F32, F16 or BF16), tokenizer.json and tokenizer_config.json (chat template, special
/// tokens). It is read as llama.cpp's converter would write its GGUF (kept beside the output
/// while the image is made, then removed).
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
    /// The model: a GGUF file, or a Hugging Face model directory.
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

/// A GGUF file that is removed when dropped.
struct Converted(PathBuf);

impl Drop for Converted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes the Hugging Face model in `dir` as a GGUF file beside `output`.
fn convert(dir: &Path, output: &Path, quiet: bool) -> Result<Converted> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("reading {prefix} {pos}/{len} tensors {wide_bar}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    bar.set_prefix(dir.display().to_string());
    let gguf = ember_hf::to_gguf(dir, &mut |done, all| {
        bar.set_length(all as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("cannot read the Hugging Face model in {}", dir.display()))?;
    bar.finish_and_clear();
    let mut path = output.as_os_str().to_owned();
    path.push(".source.gguf");
    let converted = Converted(PathBuf::from(path));
    std::fs::write(&converted.0, gguf.to_bytes())
        .with_context(|| format!("cannot write {}", converted.0.display()))?;
    Ok(converted)
}

/// Runs `ember quantize`.
pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let converted = if args.model.is_dir() {
        Some(convert(&args.model, &args.output, args.quiet)?)
    } else {
        None
    };
    let source = converted.as_ref().map_or(args.model.as_path(), |c| &c.0);
    let gguf = GgufFile::open(source)
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
