//! `ember quantize`: a GGUF model → an Ember image with int8 (or 4-bit) weights in blocks of 32
//! and the ONNX graph that runs them.
//!
//! [`Scheme::Int8`]: each 2-D weight becomes symmetric int8 blocks of 32 values with an f32
//! scale, stored as `u = q + 128` (ONNX `MatMulNBits` bits 8). Q8_0 and Q4_0 source blocks map
//! onto these exactly; other types (Q4_1, F32/F16/BF16) are dequantized and re-quantized per
//! block ([`int8::quantize`]: scale = max|w| / 127), which is where weight loss comes from.
//! The block formats are `ember_core::blocks`'; this module maps GGUF's blocks onto them.
//!
//! [`Scheme::Q4`]: the layers' matrices become 4-bit blocks of 32 (value = d · q + m,
//! `MatMulNBits` bits 4). Q4_0 and Q4_1 source blocks are stored exactly; other types are
//! quantized to Q4_1 with ggml's reference rounding first. The token embedding (and the output
//! matrix, when the model has its own) stays int8, as above.
//!
//! 1-D tensors (norms) stay `f32`. The quality report runs the int8 engine itself (int8
//! activations included) against the f32 reference on the GGUF.

use anyhow::{Result, bail};
use ember_core::blocks::{BLOCK, int8};
use ember_core::image::{
    Architecture, Manifest, QUANT_INT8, QUANT_Q4, SamplingDefaults, SelfTest, TensorEncoding,
    TokenizerData, TokenizerSpec,
};
use ember_engine::{LanguageModel, SELF_TEST_PROMPT};
use ember_gguf::{GgufError, GgufFile, TensorInfo, TensorType, dequantize};
use ember_image::{EncodedTensor, Image, ImageWriter};
use ember_reference::{ModelFile, ReferenceModel, ReferenceSession};
use ember_tokenizer::{Tokenizer, Vocabulary};
use half::f16;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

/// How the weight matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// Symmetric int8 in blocks of 32 (the default).
    #[default]
    Int8,
    /// The layers' matrices in 4-bit blocks of 32 (GGUF Q4_0/Q4_1 exactly), embedding int8.
    Q4,
}

impl Scheme {
    /// The name recorded in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Int8 => QUANT_INT8,
            Scheme::Q4 => QUANT_Q4,
        }
    }
}

/// The text the quality report is measured on (teacher-forced).
pub const QUALITY_TEXT: &str = "The old lighthouse stood at the edge of the cliff, its white tower \
weathered by a century of storms. Every evening the keeper climbed the spiral stairs, trimmed the \
wick and polished the great glass lens until it shone. Ships passing in the night counted the \
flashes and knew exactly where they were. When electricity finally reached the village, the lamp \
was replaced by a bulb and a clockwork motor, and the keeper's cottage became a small museum.";

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Encodes a layer's matrix in 4-bit blocks: Q4_0 and Q4_1 exactly, anything else through
/// ggml's Q4_1 quantization.
fn encode_4bit(info: &TensorInfo, data: &[u8]) -> Result<EncodedTensor, GgufError> {
    let requantized;
    let (ty, data) = match info.ty {
        TensorType::Q4_0 | TensorType::Q4_1 => (info.ty, data),
        _ => {
            requantized = ember_gguf::quantize(TensorType::Q4_1, &dequantize(info, data)?)?;
            (TensorType::Q4_1, &requantized[..])
        }
    };
    let block_bytes = if ty == TensorType::Q4_0 { 18 } else { 20 };
    let (mut quants, mut scales, mut mins) = (Vec::new(), Vec::new(), Vec::new());
    for block in data.chunks_exact(block_bytes) {
        let d = f16_at(block, 0);
        scales.push(d);
        // Q4_0: value = d · (q − 8) = d · q + (−8d), exact in f32.
        mins.push(if ty == TensorType::Q4_0 {
            -8.0 * d
        } else {
            f16_at(block, 2)
        });
        let nibbles = &block[block_bytes - 16..];
        quants.extend(nibbles.iter().map(|q| q & 0x0F));
        quants.extend(nibbles.iter().map(|q| q >> 4));
    }
    Ok(EncodedTensor::int4(
        &info.name, &info.dims, &quants, &scales, &mins,
    ))
}

/// Encodes one GGUF tensor for the image under `scheme`.
pub fn encode_tensor(
    info: &TensorInfo,
    data: &[u8],
    scheme: Scheme,
) -> Result<EncodedTensor, GgufError> {
    let name = info.name.as_str();
    let dims = info.dims.as_slice();
    let f32_bytes = |values: Vec<f32>| {
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    if dims.len() == 1 || !dims[0].is_multiple_of(BLOCK as u64) {
        let values = dequantize(info, data)?;
        return Ok(EncodedTensor::new(
            name,
            dims,
            TensorEncoding::F32,
            &f32_bytes(values),
            &[],
        ));
    }
    let embedding = name == "token_embd.weight" || name == "output.weight";
    if scheme == Scheme::Q4 && !embedding {
        return encode_4bit(info, data);
    }
    let (mut quants, mut scales) = (Vec::new(), Vec::new());
    match info.ty {
        TensorType::Q8_0 => {
            for block in data.chunks_exact(34) {
                scales.push(f16_at(block, 0));
                quants.extend(block[2..].iter().map(|&q| int8::stored(q as i8)));
            }
        }
        TensorType::Q4_0 => {
            // value = d · (nibble − 8): the signed quant nibble − 8.
            for block in data.chunks_exact(18) {
                scales.push(f16_at(block, 0));
                let nibbles = &block[2..];
                let stored = |nibble: u8| int8::stored(nibble as i8 - 8);
                quants.extend(nibbles.iter().map(|q| stored(q & 0x0F)));
                quants.extend(nibbles.iter().map(|q| stored(q >> 4)));
            }
        }
        _ => {
            for block in dequantize(info, data)?.as_chunks::<BLOCK>().0 {
                let (d, block_quants) = int8::quantize(block);
                scales.push(d);
                quants.extend(block_quants);
            }
        }
    };
    Ok(EncodedTensor::new(
        name,
        dims,
        TensorEncoding::Int8Block32,
        &quants,
        &scales,
    ))
}

/// Builds the manifest skeleton (tensors and sections are filled in by the writer) and the
/// tokenizer section from the GGUF's metadata and its tokenizer `vocabulary`.
fn manifest_and_vocabulary(
    file: &GgufFile,
    architecture: Architecture,
    vocabulary: &Vocabulary<'_>,
    scheme: Scheme,
    image_version: u32,
) -> Result<(Manifest, TokenizerData)> {
    let m = file.metadata();
    let data = TokenizerData {
        tokens: vocabulary.tokens.iter().map(|s| s.to_string()).collect(),
        token_types: vocabulary.token_types.iter().map(|&t| t as i32).collect(),
        merges: vocabulary.merges.iter().map(|s| s.to_string()).collect(),
        scores: vocabulary.scores.clone(),
    };
    let Some(eos) = vocabulary.eos else {
        bail!("the model has no end-of-sequence token (tokenizer.ggml.eos_token_id)");
    };
    let manifest = Manifest {
        model_name: m.get_str("general.name").unwrap_or("unnamed").to_string(),
        architecture,
        tokenizer: TokenizerSpec {
            model: vocabulary.model.to_string(),
            pre: vocabulary.pre.to_string(),
            bos: vocabulary.bos,
            eos,
            add_bos: m.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false),
            section: "tokenizer".into(),
        },
        chat_template: m
            .get_str("tokenizer.chat_template")
            .ok()
            .map(str::to_string),
        default_sampling: SamplingDefaults {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.0,
        },
        quantization: scheme.name().into(),
        tensors: Vec::new(),
        sections: Vec::new(),
        // Filled in once the image exists (see `quantize`).
        self_test: SelfTest {
            prompt: SELF_TEST_PROMPT.into(),
            tokens: Vec::new(),
        },
        image_version,
    };
    Ok((manifest, data))
}

/// How closely the int8 engine on the image reproduces the f32 reference on the GGUF,
/// teacher-forced over a fixed text.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Quality {
    /// Positions measured.
    pub positions: usize,
    /// Share of positions whose most likely next token is the same.
    pub top1_agreement: f64,
    /// Mean KL divergence (nats) of the int8 engine's next-token distribution from the reference's.
    pub mean_kl: f64,
    /// Largest difference of any logit.
    pub max_logit_error: f32,
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln();
    logits.iter().map(|&l| l as f64 - max - log_sum).collect()
}

/// Compares the int8 engine on `image` with the f32 reference on `gguf` over [`QUALITY_TEXT`].
pub fn measure_quality(gguf: &GgufFile, image: &Image, threads: usize) -> Result<Quality> {
    let tokenizer = ember_reference::gguf::tokenizer(gguf.metadata())?;
    let ids = tokenizer.encode(QUALITY_TEXT)?;
    let reference = ReferenceModel::load(gguf)?;
    let reference = ReferenceSession::new(&reference, ids.len()).logits_at_each(&ids)?;
    let int8 = ember_tract::TractModel::load(image, threads)?;
    let quantized = int8.session(ids.len())?.logits_at_each(&ids)?;
    let (mut agree, mut kl, mut max_error) = (0, 0.0, 0.0f32);
    for (r, q) in reference.iter().zip(&quantized) {
        agree += usize::from(ember_core::sampler::argmax(r) == ember_core::sampler::argmax(q));
        let (lr, lq) = (log_softmax(r), log_softmax(q));
        kl += lr
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        max_error = r
            .iter()
            .zip(q)
            .fold(max_error, |m, (a, b)| m.max((a - b).abs()));
    }
    Ok(Quality {
        positions: ids.len(),
        top1_agreement: agree as f64 / ids.len() as f64,
        mean_kl: kl / ids.len() as f64,
        max_logit_error: max_error,
    })
}

/// The longest context an image serves unless told otherwise: its RoPE tables (in the graph)
/// and a device's cache grow with it.
pub const DEFAULT_MAX_CONTEXT: usize = 8192;

/// Writes the image of the GGUF `file` to `output` under `scheme`, stamped with
/// `image_version`, serving at most `context` positions (default: the model's, at most
/// [`DEFAULT_MAX_CONTEXT`]), and returns its size.
///
/// The image is written twice: first without its self-test's tokens (to `<output>.trial`), so
/// the int8 engine can run it and generate them, then with them under the final name.
pub fn quantize(
    file: &GgufFile,
    output: &Path,
    scheme: Scheme,
    (image_version, context): (u32, Option<usize>),
    progress: bool,
    threads: usize,
) -> Result<u64> {
    let mut architecture = ember_reference::gguf::architecture(file.metadata())?;
    let trained = architecture.context_length;
    architecture.context_length = match context {
        Some(0) => bail!("--context must be at least 1"),
        Some(asked) if asked > trained => {
            bail!("--context {asked} is longer than the model was trained for ({trained})")
        }
        Some(asked) => asked,
        None => trained.min(DEFAULT_MAX_CONTEXT),
    };
    let vocabulary = ember_reference::gguf::vocabulary(file.metadata())?;
    // The tokenizer must build before anything is written.
    Tokenizer::from_vocabulary(vocabulary.clone())?;
    let (manifest, data) =
        manifest_and_vocabulary(file, architecture, &vocabulary, scheme, image_version)?;
    let mut writer = ImageWriter::new(manifest, data);
    let bar = if progress {
        ProgressBar::new(file.tensors().len() as u64).with_style(
            ProgressStyle::with_template("quantizing {pos}/{len} tensors {wide_bar} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    } else {
        ProgressBar::hidden()
    };
    for info in file.tensors() {
        bar.set_message(info.name.clone());
        // Query and key rows in Ember's RoPE order (reordered for families stored rotate-half).
        let data =
            ember_reference::gguf::in_rope_order(&architecture, info, file.tensor_data(info))?;
        writer.add_tensor(encode_tensor(info, &data, scheme)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    writer.set_graph(ember_tract::graph::build(
        &architecture,
        &writer.tensor_entries(),
    )?);
    let mut trial = output.as_os_str().to_owned();
    trial.push(".trial");
    let trial = std::path::PathBuf::from(trial);
    writer.write(&trial)?;
    let tokens = self_test_of(&trial, threads);
    let _ = std::fs::remove_file(&trial);
    writer.set_self_test(SelfTest {
        prompt: SELF_TEST_PROMPT.into(),
        tokens: tokens?,
    });
    let size = writer.write(output)?;
    Ok(size)
}

/// The greedy tokens the int8 engine generates for [`SELF_TEST_PROMPT`] on the image at `path`.
fn self_test_of(path: &Path, threads: usize) -> Result<Vec<u32>> {
    let file = ModelFile::open(path)?;
    let ModelFile::Image(image) = &file else {
        bail!("{} is not an Ember image", path.display());
    };
    Ok(ember_tract::self_test(image, &file.tokenizer()?, threads)?)
}
