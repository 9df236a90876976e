//! `ember bench`: load time, time to first token, prefill and decode speed at a short and a
//! ~400-token context, resident memory — and, when the `xllamacpp` wheel is installed, the same
//! measurements of llama.cpp on the same GGUF in the same run, with Ember/llama.cpp ratios.

use crate::model::{Engine, LoadedModel};
use anyhow::{Context, Result, bail};
use ember_core::{
    chat::{ChatTemplate, Message, Role},
    sampler::argmax,
};
use ember_engine::{ModelFile, memory};
use ember_tract::TractModel;
use serde::Serialize;
use std::{path::Path, process::Command, time::Instant};

/// The llama.cpp side, run with `python3 -c`.
const PEER_SCRIPT: &str = include_str!("peer_llama_cpp.py");

/// The short-context prompt (rendered with the model's chat template when it has one).
const SHORT_PROMPT: &str =
    "What is the capital of France? Answer in one sentence, then give one fun fact about it.";

/// The prompt `ember bench --port` sends: its reply has several sentences.
pub const SERIAL_PROMPT: &str =
    "Tell me about Paris in a few sentences: its history, its landmarks and its food.";

/// Tokens of the long-context prompt.
pub const LONG_PROMPT_TOKENS: usize = 400;

/// One measured prompt.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BenchRun {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Seconds from the start of prefill to the first token.
    pub time_to_first_token_seconds: f64,
    /// Prompt tokens per second.
    pub prefill_tokens_per_second: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_second: f64,
}

/// llama.cpp's numbers on the same prompts.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerReport {
    /// Engine and version.
    pub engine: String,
    /// Seconds to load the GGUF.
    pub load_seconds: f64,
    /// One entry per prompt, in the same order as Ember's.
    pub runs: Vec<BenchRun>,
}

/// Everything `ember bench` measures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Which engine produced Ember's numbers.
    pub engine: String,
    /// Worker threads.
    pub threads: usize,
    /// Seconds to open the model and build the engine.
    pub load_seconds: f64,
    /// Short context, then long context.
    pub runs: Vec<BenchRun>,
    /// Anonymous resident memory after the runs.
    pub rss_anon_bytes: u64,
    /// File-backed resident memory after the runs.
    pub rss_file_bytes: u64,
    /// llama.cpp on the same GGUF, when it could run.
    pub peer: Option<PeerReport>,
    /// Why llama.cpp did not run, when it did not.
    pub peer_skipped: Option<String>,
    /// With `--profile`: decode time per token by op kind.
    pub profile: Option<DecodeProfile>,
}

/// Where one decoded token's time goes in the int8 engine, by op kind.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeProfile {
    /// Tokens decoded while profiling.
    pub tokens: u64,
    /// Wall time per token, all ops together (ms).
    pub ms_per_token: f64,
    /// Op kinds, slowest first.
    pub kinds: Vec<OpKindTime>,
}

/// One op kind's share of a decoded token.
#[derive(Debug, Clone, Serialize)]
pub struct OpKindTime {
    /// tract's name for the op (Ember's own ops start with `Ember`).
    pub op: String,
    /// Milliseconds per token.
    pub ms_per_token: f64,
    /// Evaluations per token.
    pub ops_per_token: f64,
}

/// Decodes `decode_tokens` tokens after `prompt` with every op timed.
fn profile(engine: &TractModel, prompt: &[u32], decode_tokens: usize) -> Result<DecodeProfile> {
    let mut session = engine.session(prompt.len() + decode_tokens)?;
    let mut token = argmax(&ember_engine::LanguageModel::feed(&mut session, prompt)?);
    session.profile(true);
    let start = Instant::now();
    for _ in 1..decode_tokens {
        token = argmax(&ember_engine::LanguageModel::feed(&mut session, &[token])?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let recorded = session.profile(false).unwrap_or_default();
    let tokens = recorded.runs.max(1);
    let mut kinds: Vec<OpKindTime> = recorded
        .kinds
        .into_iter()
        .map(|(op, (time, count))| OpKindTime {
            op,
            ms_per_token: time.as_secs_f64() * 1e3 / tokens as f64,
            ops_per_token: count as f64 / tokens as f64,
        })
        .collect();
    kinds.sort_by(|a, b| b.ms_per_token.total_cmp(&a.ms_per_token));
    Ok(DecodeProfile {
        tokens,
        ms_per_token: elapsed * 1e3 / tokens as f64,
        kinds,
    })
}

fn measure(model: &LoadedModel, prompt: &[u32], decode_tokens: usize) -> Result<BenchRun> {
    let mut session = model.session(prompt.len() + decode_tokens)?;
    let start = Instant::now();
    let logits = session.feed(prompt)?;
    let prefill = start.elapsed().as_secs_f64();
    let mut token = argmax(&logits);
    let first = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    for _ in 1..decode_tokens {
        token = argmax(&session.feed(&[token])?);
    }
    let decode = decode_start.elapsed().as_secs_f64();
    Ok(BenchRun {
        prompt_tokens: prompt.len(),
        time_to_first_token_seconds: first,
        prefill_tokens_per_second: prompt.len() as f64 / prefill,
        decode_tokens_per_second: decode_tokens.saturating_sub(1) as f64 / decode.max(1e-9),
    })
}

/// The two benchmark prompts as token ids: the chat-rendered short prompt and
/// [`LONG_PROMPT_TOKENS`] tokens of running text.
fn prompts(file: &ModelFile) -> Result<Vec<Vec<u32>>> {
    let tokenizer = file.tokenizer()?;
    let short_text = match file.chat_template() {
        Some(source) => {
            let mut text = String::new();
            ChatTemplate::from_jinja(source)?.render(
                &[Message::new(Role::User, SHORT_PROMPT)],
                true,
                &mut text,
            )?;
            text
        }
        None => SHORT_PROMPT.to_string(),
    };
    let short = tokenizer.encode(&short_text)?;
    let mut long = Vec::new();
    while long.len() < LONG_PROMPT_TOKENS {
        long.extend(tokenizer.encode(ember_models::quantize::QUALITY_TEXT)?);
    }
    long.truncate(LONG_PROMPT_TOKENS);
    Ok(vec![short, long])
}

fn run_peer(
    gguf: &Path,
    threads: usize,
    decode_tokens: usize,
    prompts: &[Vec<u32>],
) -> Result<PeerReport> {
    let python = std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = Command::new(&python);
    command
        .args(["-c", PEER_SCRIPT])
        .arg(gguf)
        .arg(threads.to_string())
        .arg(decode_tokens.to_string());
    for ids in prompts {
        command.arg(serde_json::to_string(ids)?);
    }
    let output = command
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_string();
        bail!("llama.cpp peer failed ({}): {last}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("unexpected peer output {line:?}"))
}

/// Benchmarks the model at `path` (GGUF or image); `peer_gguf` (or the model itself, when it is
/// a GGUF) is run through llama.cpp for comparison.
pub fn bench(
    path: &Path,
    peer_gguf: Option<&Path>,
    threads: usize,
    decode_tokens: usize,
    with_profile: bool,
) -> Result<BenchReport> {
    if decode_tokens < 2 {
        bail!("--decode-tokens must be at least 2");
    }
    let start = Instant::now();
    let model = LoadedModel::open(path, threads)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let profiled = match (&model.engine, with_profile) {
        (_, false) => None,
        (Engine::Tract(engine), true) => Some(engine),
        (_, true) => bail!("--profile times the int8 engine's ops: give it an Ember image"),
    };
    let context = model.config().context_length;
    let measured: Vec<Vec<u32>> = prompts(&model.file)?
        .into_iter()
        .filter(|p| p.len() + decode_tokens <= context)
        .collect();
    let runs = measured
        .iter()
        .map(|p| measure(&model, p, decode_tokens))
        .collect::<Result<Vec<_>>>()?;
    let profile = match (profiled, measured.first()) {
        (Some(engine), Some(prompt)) => Some(profile(engine, prompt, decode_tokens)?),
        _ => None,
    };
    let resident = memory::resident();
    let peer_path = peer_gguf.or(match model.file {
        ModelFile::Gguf(_) => Some(path),
        ModelFile::Image(_) => None,
    });
    let (peer, peer_skipped) = match peer_path {
        None => (
            None,
            Some("no GGUF for llama.cpp (pass --gguf)".to_string()),
        ),
        Some(gguf) => match run_peer(gguf, threads, decode_tokens, &measured) {
            Ok(report) => (Some(report), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        },
    };
    Ok(BenchReport {
        engine: model.engine_name(),
        threads,
        load_seconds,
        runs,
        rss_anon_bytes: resident.anon_bytes,
        rss_file_bytes: resident.file_bytes,
        peer,
        peer_skipped,
        profile,
    })
}

/// The report as a table for people.
impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&table(self))
    }
}

fn table(report: &BenchReport) -> String {
    let mut out = String::new();
    let peer = report.peer.as_ref();
    let row = |out: &mut String, label: &str, ours: f64, theirs: Option<f64>, digits: usize| {
        let theirs_text = theirs.map_or("—".to_string(), |t| format!("{t:.digits$}"));
        let ratio = theirs.map_or("—".to_string(), |t| format!("{:.2}×", ours / t));
        out.push_str(&format!(
            "{label:<28} {ours:>12.digits$} {theirs_text:>12} {ratio:>10}\n"
        ));
    };
    out.push_str(&format!(
        "{:<28} {:>12} {:>12} {:>10}\n",
        format!("{} threads", report.threads),
        "ember",
        "llama.cpp",
        "ember/l.cpp"
    ));
    row(
        &mut out,
        "load (s)",
        report.load_seconds,
        peer.map(|p| p.load_seconds),
        3,
    );
    for (i, run) in report.runs.iter().enumerate() {
        let theirs = peer.and_then(|p| p.runs.get(i));
        out.push_str(&format!("prompt of {} tokens\n", run.prompt_tokens));
        row(
            &mut out,
            "  time to first token (s)",
            run.time_to_first_token_seconds,
            theirs.map(|t| t.time_to_first_token_seconds),
            3,
        );
        row(
            &mut out,
            "  prefill (tok/s)",
            run.prefill_tokens_per_second,
            theirs.map(|t| t.prefill_tokens_per_second),
            1,
        );
        row(
            &mut out,
            "  decode (tok/s)",
            run.decode_tokens_per_second,
            theirs.map(|t| t.decode_tokens_per_second),
            1,
        );
    }
    out.push_str(&format!(
        "RssAnon {:.1} MB, RssFile {:.1} MB (ember)\n",
        report.rss_anon_bytes as f64 / 1e6,
        report.rss_file_bytes as f64 / 1e6
    ));
    match (peer, &report.peer_skipped) {
        (Some(p), _) => out.push_str(&format!("peer: {}; ratios are Ember ÷ llama.cpp (speeds: higher is better for Ember; times: lower)\n", p.engine)),
        (None, Some(why)) => out.push_str(&format!("llama.cpp peer skipped: {why}\n")),
        (None, None) => {}
    }
    if let Some(profile) = &report.profile {
        let ops: f64 = profile.kinds.iter().map(|k| k.ops_per_token).sum();
        let timed: f64 = profile.kinds.iter().map(|k| k.ms_per_token).sum();
        out.push_str(&format!(
            "decode profile ({} tokens after the short prompt): {:.2} ms/token, {:.2} ms in {ops:.0} ops\n",
            profile.tokens, profile.ms_per_token, timed
        ));
        out.push_str(&format!(
            "  {:<32} {:>10} {:>7} {:>10}\n",
            "op", "ms/token", "share", "ops/token"
        ));
        for kind in &profile.kinds {
            out.push_str(&format!(
                "  {:<32} {:>10.3} {:>6.1}% {:>10.1}\n",
                kind.op,
                kind.ms_per_token,
                100.0 * kind.ms_per_token / timed.max(1e-9),
                kind.ops_per_token
            ));
        }
    }
    out
}
