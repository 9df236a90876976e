//! `ember inspect`: an image's manifest, its hash (the one a device's Hello carries) and every
//! section checked against its SHA-256.

use anyhow::{Context, Result};
use ember_core::image::ImageHeader;
use ember_image::Image;
use ember_models::fetch::hex;
use serde::Serialize;
use std::path::PathBuf;

/// Print an Ember image's manifest and check every section's SHA-256.
///
/// The manifest SHA-256 is the model hash a device running the image announces in its Hello
/// (`ember chat --port` shows its first 16 hex digits), so a device can be matched to a file.
#[derive(clap::Args)]
pub struct Args {
    /// The image.
    image: PathBuf,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    json: bool,
}

/// What `ember inspect` reports.
#[derive(Serialize)]
struct Inspection {
    image: PathBuf,
    bytes: u64,
    model: String,
    image_version: u32,
    manifest_sha256: String,
    architecture: String,
    tokenizer: String,
    chat_template: String,
    sampling: String,
    quantization: String,
    tensors: usize,
    sections: Vec<Section>,
}

#[derive(Serialize)]
struct Section {
    name: String,
    offset: u64,
    length: u64,
    sha256: String,
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "image         {} ({} bytes)",
            self.image.display(),
            self.bytes
        )?;
        writeln!(f, "model         {}", self.model)?;
        writeln!(
            f,
            "image version {} (a device refuses a lower one)",
            self.image_version
        )?;
        writeln!(
            f,
            "manifest      sha256 {} (the model hash of a device's Hello)",
            self.manifest_sha256
        )?;
        writeln!(f, "architecture  {}", self.architecture)?;
        writeln!(f, "tokenizer     {}", self.tokenizer)?;
        writeln!(f, "chat template {}", self.chat_template)?;
        writeln!(f, "sampling      {}", self.sampling)?;
        writeln!(
            f,
            "quantization  {} ({} tensors)",
            self.quantization, self.tensors
        )?;
        for s in &self.sections {
            writeln!(
                f,
                "section       {:<10} offset {:>10} length {:>10} sha256 {}",
                s.name, s.offset, s.length, s.sha256
            )?;
        }
        write!(f, "hashes        all sections match")
    }
}

/// Runs `ember inspect`.
pub fn run(args: Args) -> Result<()> {
    let image = Image::open(&args.image)?;
    image.verify()?;
    let header = ImageHeader::parse(&image.mapping()[..])
        .with_context(|| format!("cannot read the header of {}", args.image.display()))?;
    let m = image.manifest();
    let a = &m.architecture;
    let t = &m.tokenizer;
    let s = &m.default_sampling;
    let report = Inspection {
        bytes: image.file_size(),
        model: m.model_name.clone(),
        image_version: m.image_version,
        manifest_sha256: hex(&header.manifest_sha256),
        architecture: format!(
            "llama: {} blocks, width {}, FFN {}, {} heads / {} KV heads, RoPE dim {} base {}, eps {:e}, context {}, vocab {}",
            a.n_layers,
            a.n_embd,
            a.n_ff,
            a.n_head,
            a.n_head_kv,
            a.rope_dim,
            a.rope_base,
            a.rms_eps,
            a.context_length,
            a.vocab_size
        ),
        tokenizer: format!(
            "{} / {}, bos {:?}, eos {}, add bos {}",
            t.model, t.pre, t.bos, t.eos, t.add_bos
        ),
        chat_template: m
            .chat_template
            .as_ref()
            .map_or("none".to_string(), |c| format!("{} chars", c.len())),
        sampling: format!(
            "temperature {}, top-k {}, top-p {}, repetition penalty {}",
            s.temperature, s.top_k, s.top_p, s.repetition_penalty
        ),
        quantization: m.quantization.clone(),
        tensors: m.tensors.len(),
        sections: m
            .sections
            .iter()
            .map(|s| Section {
                name: s.name.to_string(),
                offset: s.offset,
                length: s.length,
                sha256: hex(&s.sha256),
            })
            .collect(),
        image: args.image,
    };
    super::emit(&report, args.json)
}
