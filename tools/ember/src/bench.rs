//! `ember bench`: load time, time to first token, prefill and decode speed at a short and a
//! ~400-token context, resident memory, at one or more thread counts — and, in the same run, on
//! the same prompt ids and thread counts, the same measurements of two peers when they are
//! installed: llama.cpp (the `xllamacpp` wheel) on the GGUF and onnxruntime on the graph `ember
//! export-onnx` writes, with Ember/peer ratios.

use crate::model::{Engine, LoadedModel};
use anyhow::{Context, Result, bail};
use ember_core::sampler::argmax;
use ember_engine::{ChatFormat, memory};
use ember_reference::ModelFile;
use ember_template::{Message, Role};
use ember_tract::TractModel;
use serde::Serialize;
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

/// The llama.cpp peer, run with `python3 -c`.
const LLAMA_CPP_SCRIPT: &str = include_str!("peer_llama_cpp.py");

/// The onnxruntime peer, run with `python3 -c`.
const ONNXRUNTIME_SCRIPT: &str = include_str!("peer_onnxruntime.py");

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

/// A peer's numbers on the same prompts (what its script prints).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerReport {
    /// Engine and version.
    pub engine: String,
    /// Seconds to load the model (llama.cpp: the GGUF; onnxruntime: the exported graph).
    pub load_seconds: f64,
    /// One entry per prompt, in the same order as Ember's.
    pub runs: Vec<BenchRun>,
}

/// What a peer did at one thread count: its numbers, or why it did not run.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Peer {
    /// It ran on the same prompts.
    Ran(PeerReport),
    /// It did not run.
    Skipped {
        /// Why (not installed, no GGUF, not an Ember image, or its error).
        skipped: String,
    },
}

impl Peer {
    /// Its numbers, when it ran.
    pub fn report(&self) -> Option<&PeerReport> {
        match self {
            Peer::Ran(report) => Some(report),
            Peer::Skipped { .. } => None,
        }
    }
}

/// The peers at one thread count.
#[derive(Debug, Clone, Serialize)]
pub struct Peers {
    /// llama.cpp (the `xllamacpp` wheel) on the GGUF.
    pub llama_cpp: Peer,
    /// onnxruntime on the graph `ember export-onnx` writes (Ember images only).
    pub onnxruntime: Peer,
}

/// Ember and the peers at one thread count.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadsReport {
    /// Worker threads, for Ember and for the peers.
    pub threads: usize,
    /// Seconds to open the model and build the engine.
    pub load_seconds: f64,
    /// Short context, then long context.
    pub runs: Vec<BenchRun>,
    /// Anonymous resident memory after the runs.
    pub rss_anon_bytes: u64,
    /// File-backed resident memory after the runs.
    pub rss_file_bytes: u64,
    /// The peers on the same prompt ids and thread count.
    pub peers: Peers,
}

/// Everything `ember bench` measures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Which engine produced Ember's numbers.
    pub engine: String,
    /// Tokens generated per measurement.
    pub decode_tokens: usize,
    /// One entry per thread count, fewest threads first.
    pub threads: Vec<ThreadsReport>,
    /// With `--profile`: decode time per token by op kind, at the largest thread count.
    pub profile: Option<DecodeProfile>,
}

/// Where one decoded token's time goes in the int8 engine, by op kind.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeProfile {
    /// Worker threads.
    pub threads: usize,
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
        threads: engine.threads(),
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
    // Without the beginning-of-sequence token, as the peers are given the same ids.
    let format = ChatFormat::new(file.chat_template(), &tokenizer, false)?;
    let short_text = format.render(&[Message::new(Role::User, SHORT_PROMPT)])?;
    let short = tokenizer.encode(&short_text)?;
    let mut long = Vec::new();
    while long.len() < LONG_PROMPT_TOKENS {
        long.extend(tokenizer.encode(ember_models::quantize::QUALITY_TEXT)?);
    }
    long.truncate(LONG_PROMPT_TOKENS);
    Ok(vec![short, long])
}

/// Runs a peer script (`python3 -c SCRIPT MODEL THREADS DECODE_TOKENS IDS_JSON…`) and reads
/// the JSON line it prints last.
fn run_peer(
    name: &str,
    script: &str,
    model: &Path,
    threads: usize,
    decode_tokens: usize,
    prompts: &[Vec<u32>],
) -> Result<PeerReport> {
    let python = std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = Command::new(&python);
    command
        .args(["-c", script])
        .arg(model)
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
        bail!("{name} peer failed ({}): {last}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("unexpected {name} peer output {line:?}"))
}

/// A peer's run as a report entry: its numbers, or why it could not run.
fn peer(run: Result<PeerReport>) -> Peer {
    match run {
        Ok(report) => Peer::Ran(report),
        Err(e) => Peer::Skipped {
            skipped: format!("{e:#}"),
        },
    }
}

/// A directory under the system's temporary directory, removed with everything in it on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Exports the image at `path` for onnxruntime into a temporary directory, its matmuls set to
/// int8 activations as Ember's ([`crate::onnx::with_int8_activations`]).
fn export_for_onnxruntime(path: &Path) -> Result<TempDir> {
    let dir = TempDir::new("ember-bench-onnx")?;
    let image = ember_image::Image::open(path)?;
    let written =
        crate::onnx::export(&image, &dir.0).context("cannot export the graph for onnxruntime")?;
    for (file, _) in written
        .iter()
        .filter(|(f, _)| f.extension() == Some("onnx".as_ref()))
    {
        let model =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        ember_image::write_atomically(file, &crate::onnx::with_int8_activations(&model)?)?;
    }
    Ok(dir)
}

fn plural(threads: usize) -> &'static str {
    if threads == 1 { "" } else { "s" }
}

/// Benchmarks the model at `path` (GGUF or image) at each of `threads` (worker thread counts,
/// measured fewest first), beside two peers on the same prompt ids and thread counts:
/// llama.cpp on `peer_gguf` (or the model itself, when it is a GGUF), and onnxruntime on the
/// exported graph (when the model is an Ember image). With `with_profile`, also times the int8
/// engine's ops at the largest thread count.
pub fn bench(
    path: &Path,
    peer_gguf: Option<&Path>,
    threads: &[usize],
    decode_tokens: usize,
    with_profile: bool,
) -> Result<BenchReport> {
    if decode_tokens < 2 {
        bail!("--decode-tokens must be at least 2");
    }
    let mut counts = threads.to_vec();
    counts.sort_unstable();
    counts.dedup();
    let Some(&most) = counts.last() else {
        bail!("--threads needs at least one thread count");
    };
    if counts[0] == 0 {
        bail!("--threads must be at least 1");
    }
    // Ember's f32 reference (GGUF) splits its work over rayon's pool; the int8 engine brings
    // its own workers.
    let is_gguf = matches!(
        ModelFile::open(path).with_context(|| format!("cannot load model {}", path.display()))?,
        ModelFile::Gguf(_)
    );
    let mut engine_name = String::new();
    let mut measured: Option<Vec<Vec<u32>>> = None;
    let mut onnx_dir: Option<Result<TempDir, String>> = None;
    let mut profile_report = None;
    let mut sections = Vec::new();
    for &count in &counts {
        eprintln!("measuring ember at {count} thread{}", plural(count));
        let mut ember = || -> Result<_> {
            let start = Instant::now();
            let model = LoadedModel::open(path, count)?;
            let load_seconds = start.elapsed().as_secs_f64();
            let profiled = match (&model.engine, with_profile) {
                (_, false) => None,
                (Engine::Tract(engine), true) => Some(engine),
                (_, true) => bail!("--profile times the int8 engine's ops: give it an Ember image"),
            };
            engine_name = model.engine_name();
            if measured.is_none() {
                let context = model.architecture().context_length;
                measured = Some(
                    prompts(&model.file)?
                        .into_iter()
                        .filter(|p| p.len() + decode_tokens <= context)
                        .collect(),
                );
            }
            let prompts = measured.as_deref().unwrap_or_default();
            let runs = prompts
                .iter()
                .map(|p| measure(&model, p, decode_tokens))
                .collect::<Result<Vec<_>>>()?;
            if let (Some(engine), Some(prompt), true) = (profiled, prompts.first(), count == most) {
                eprintln!("profiling ember at {count} thread{}", plural(count));
                profile_report = Some(profile(engine, prompt, decode_tokens)?);
            }
            Ok((load_seconds, runs, memory::resident()))
        };
        let (load_seconds, runs, resident) = if is_gguf {
            rayon::ThreadPoolBuilder::new()
                .num_threads(count)
                .build()
                .context("cannot start worker threads")?
                .install(ember)?
        } else {
            // On this thread: a pool thread's allocator arena would keep what this count freed
            // in the next count's RssAnon.
            ember()?
        };
        let prompts = measured.as_deref().unwrap_or_default();
        let llama_cpp = match peer_gguf.or(is_gguf.then_some(path)) {
            None => Peer::Skipped {
                skipped: "no GGUF for llama.cpp (pass --gguf)".into(),
            },
            Some(gguf) => {
                eprintln!("measuring llama.cpp at {count} thread{}", plural(count));
                peer(run_peer(
                    "llama.cpp",
                    LLAMA_CPP_SCRIPT,
                    gguf,
                    count,
                    decode_tokens,
                    prompts,
                ))
            }
        };
        let exported = onnx_dir.get_or_insert_with(|| {
            if is_gguf {
                return Err(
                    "onnxruntime runs the graph of an Ember image (`ember export-onnx`); \
                     this model is a GGUF"
                        .into(),
                );
            }
            eprintln!("exporting the graph for onnxruntime");
            export_for_onnxruntime(path).map_err(|e| format!("{e:#}"))
        });
        let onnxruntime = match exported {
            Err(why) => Peer::Skipped {
                skipped: why.clone(),
            },
            Ok(dir) => {
                eprintln!("measuring onnxruntime at {count} thread{}", plural(count));
                peer(
                    run_peer(
                        "onnxruntime",
                        ONNXRUNTIME_SCRIPT,
                        &dir.0,
                        count,
                        decode_tokens,
                        prompts,
                    )
                    .map(|mut report| {
                        report.engine = format!(
                            "{} on the exported graph, MatMulNBits accuracy_level {} (int8 \
                             activations)",
                            report.engine,
                            crate::onnx::INT8_ACCURACY_LEVEL
                        );
                        report
                    }),
                )
            }
        };
        sections.push(ThreadsReport {
            threads: count,
            load_seconds,
            runs,
            rss_anon_bytes: resident.anon_bytes,
            rss_file_bytes: resident.file_bytes,
            peers: Peers {
                llama_cpp,
                onnxruntime,
            },
        });
    }
    Ok(BenchReport {
        engine: engine_name,
        decode_tokens,
        threads: sections,
        profile: profile_report,
    })
}

/// The report as a table for people.
impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&table(self))
    }
}

/// The peers in table order, with their names and ratio column headings.
const PEER_NAMES: [(&str, &str); 2] = [("llama.cpp", "ember/l.cpp"), ("onnxruntime", "ember/ort")];

impl Peers {
    /// The peers in the order of [`PEER_NAMES`].
    fn all(&self) -> [&Peer; 2] {
        [&self.llama_cpp, &self.onnxruntime]
    }
}

fn table(report: &BenchReport) -> String {
    let mut out = String::new();
    // A peer gets columns when it ran at some thread count.
    let shown: Vec<usize> = (0..PEER_NAMES.len())
        .filter(|&i| {
            report
                .threads
                .iter()
                .any(|s| s.peers.all()[i].report().is_some())
        })
        .collect();
    let row = |out: &mut String, label: &str, ours: f64, theirs: &[Option<f64>], digits: usize| {
        out.push_str(&format!("{label:<28} {ours:>12.digits$}"));
        for theirs in theirs {
            let text = theirs.map_or("—".to_string(), |t| format!("{t:.digits$}"));
            let ratio = theirs.map_or("—".to_string(), |t| format!("{:.2}×", ours / t));
            out.push_str(&format!(" {text:>12} {ratio:>11}"));
        }
        out.push('\n');
    };
    for (i, section) in report.threads.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let peers: Vec<Option<&PeerReport>> = shown
            .iter()
            .map(|&i| section.peers.all()[i].report())
            .collect();
        out.push_str(&format!(
            "{:<28} {:>12}",
            format!("{} thread{}", section.threads, plural(section.threads)),
            "ember"
        ));
        for (name, ratio) in shown.iter().map(|&i| PEER_NAMES[i]) {
            out.push_str(&format!(" {name:>12} {ratio:>11}"));
        }
        out.push('\n');
        let load: Vec<_> = peers.iter().map(|p| p.map(|p| p.load_seconds)).collect();
        row(&mut out, "load (s)", section.load_seconds, &load, 3);
        for (i, run) in section.runs.iter().enumerate() {
            let theirs: Vec<Option<&BenchRun>> = peers
                .iter()
                .map(|p| p.and_then(|p| p.runs.get(i)))
                .collect();
            let of = |field: fn(&BenchRun) -> f64| -> Vec<Option<f64>> {
                theirs.iter().map(|t| t.map(field)).collect()
            };
            out.push_str(&format!("prompt of {} tokens\n", run.prompt_tokens));
            row(
                &mut out,
                "  time to first token (s)",
                run.time_to_first_token_seconds,
                &of(|t| t.time_to_first_token_seconds),
                3,
            );
            row(
                &mut out,
                "  prefill (tok/s)",
                run.prefill_tokens_per_second,
                &of(|t| t.prefill_tokens_per_second),
                1,
            );
            row(
                &mut out,
                "  decode (tok/s)",
                run.decode_tokens_per_second,
                &of(|t| t.decode_tokens_per_second),
                1,
            );
        }
        out.push_str(&format!(
            "RssAnon {:.1} MB, RssFile {:.1} MB (ember)\n",
            section.rss_anon_bytes as f64 / 1e6,
            section.rss_file_bytes as f64 / 1e6
        ));
    }
    out.push('\n');
    out.push_str(&format!("{}\n", report.engine));
    for (i, (name, _)) in PEER_NAMES.into_iter().enumerate() {
        // The engine it ran as, and each distinct reason it did not (with the thread counts).
        let mut engines: Vec<&str> = Vec::new();
        let mut skipped: Vec<(&str, Vec<usize>)> = Vec::new();
        for section in &report.threads {
            match section.peers.all()[i] {
                Peer::Ran(p) if !engines.contains(&p.engine.as_str()) => engines.push(&p.engine),
                Peer::Ran(_) => {}
                Peer::Skipped { skipped: why } => {
                    match skipped.iter_mut().find(|(w, _)| *w == why.as_str()) {
                        Some((_, counts)) => counts.push(section.threads),
                        None => skipped.push((why, vec![section.threads])),
                    }
                }
            }
        }
        for engine in engines {
            out.push_str(&format!("peer: {engine}\n"));
        }
        for (why, counts) in skipped {
            let all = counts.len() == report.threads.len();
            let at = if all {
                String::new()
            } else {
                let last = counts.last().copied().unwrap_or(1);
                let counts: Vec<String> = counts.iter().map(usize::to_string).collect();
                format!(" at {} thread{}", counts.join(", "), plural(last))
            };
            out.push_str(&format!("{name} peer skipped{at}: {why}\n"));
        }
    }
    if !shown.is_empty() {
        out.push_str(
            "ratios are Ember ÷ peer on the same prompt ids and threads (speeds: higher is better \
             for Ember; times: lower)\n",
        );
    }
    if let Some(profile) = &report.profile {
        let ops: f64 = profile.kinds.iter().map(|k| k.ops_per_token).sum();
        let timed: f64 = profile.kinds.iter().map(|k| k.ms_per_token).sum();
        out.push_str(&format!(
            "decode profile ({} tokens after the short prompt, {} thread{}): {:.2} ms/token, {:.2} ms in {ops:.0} ops\n",
            profile.tokens,
            profile.threads,
            plural(profile.threads),
            profile.ms_per_token,
            timed
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(prompt_tokens: usize, speed: f64) -> BenchRun {
        BenchRun {
            prompt_tokens,
            time_to_first_token_seconds: prompt_tokens as f64 / speed,
            prefill_tokens_per_second: speed,
            decode_tokens_per_second: speed / 4.0,
        }
    }

    fn section(threads: usize, onnxruntime: Peer) -> ThreadsReport {
        ThreadsReport {
            threads,
            load_seconds: 0.1,
            runs: vec![run(50, 400.0), run(400, 300.0)],
            rss_anon_bytes: 1,
            rss_file_bytes: 2,
            peers: Peers {
                llama_cpp: Peer::Skipped {
                    skipped: "no GGUF for llama.cpp (pass --gguf)".into(),
                },
                onnxruntime,
            },
        }
    }

    /// One section per thread count; a peer that never ran gets no columns, only its reason
    /// (once, or with the thread counts it applies to); ratios are Ember ÷ peer.
    #[test]
    fn the_table_has_a_section_per_thread_count_and_says_why_a_peer_is_missing() {
        let ran = Peer::Ran(PeerReport {
            engine: "onnxruntime 1.0 (CPU)".into(),
            load_seconds: 0.2,
            runs: vec![run(50, 200.0), run(400, 100.0)],
        });
        let report = BenchReport {
            engine: "ember int8".into(),
            decode_tokens: 8,
            threads: vec![
                section(1, ran),
                section(
                    2,
                    Peer::Skipped {
                        skipped: "it crashed".into(),
                    },
                ),
            ],
            profile: None,
        };
        let text = report.to_string();
        assert!(text.contains("1 thread "), "{text}");
        assert!(text.contains("\n2 threads "), "{text}");
        assert!(text.contains("onnxruntime   ember/ort"), "{text}");
        assert!(!text.contains("ember/l.cpp"), "{text}");
        assert!(text.contains("0.50×"), "load ratio in {text}");
        assert!(text.contains("3.00×"), "400-token prefill ratio in {text}");
        assert!(
            text.contains("llama.cpp peer skipped: no GGUF for llama.cpp (pass --gguf)\n"),
            "{text}"
        );
        assert!(
            text.contains("onnxruntime peer skipped at 2 threads: it crashed\n"),
            "{text}"
        );
        assert!(text.contains("peer: onnxruntime 1.0 (CPU)\n"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["threads"][1]["peers"]["onnxruntime"]["skipped"],
            "it crashed"
        );
        assert_eq!(
            json["threads"][0]["peers"]["onnxruntime"]["load_seconds"],
            0.2
        );
    }
}
