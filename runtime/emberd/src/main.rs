//! `emberd`: serves a chat with an Ember image over a serial line.

use anyhow::{Context, Result, bail};
use clap::Parser;
use ember_core::chat::ChatTemplate;
use ember_core::image::ImageHeader;
use ember_core::protocol::{self, Hello, MAX_FRAME, PROTOCOL_VERSION};
use ember_core::sampler::SamplingConfig;
use ember_engine::{ChatSession, ModelFile};
use ember_serial::{PtyPair, Tty};
use ember_tract::TractModel;
use emberd::server::{Server, Settings};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Chat with an Ember model over a serial line.
///
/// A person types in a serial console (picocom, minicom, screen): line mode, with /help.
/// Programs (`ember chat --port`, `ember ask --port`, voice kiosks) switch the line to frame
/// mode; see docs/PROTOCOL.md.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example: emberd --port /dev/ttyAMA0 --baud 115200 --model smollm2.ember\n\
Development without a serial cable: emberd --pty --model smollm2.ember, then picocom the printed path."
)]
struct Args {
    /// The Ember image to serve (made by `ember quantize`).
    #[arg(long)]
    model: PathBuf,
    /// Serial device, e.g. /dev/ttyAMA0 or /dev/ttyUSB0.
    #[arg(long, required_unless_present = "pty", conflicts_with = "pty")]
    port: Option<PathBuf>,
    /// Baud rate of --port.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Make a PTY pair and serve on it; its device path is printed on stdout.
    #[arg(long)]
    pty: bool,
    /// Worker threads for the model (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Context positions (default: the model's); the oldest turns are dropped when it is full.
    #[arg(long)]
    context: Option<usize>,
    /// System prompt (default: the model's).
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Give up a reply when the other end takes no bytes for this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    write_timeout_ms: u64,
}

/// Logs to stderr; `EMBER_LOG=debug` shows more, `EMBER_LOG=warn` less.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "emberd: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    let level = std::env::var("EMBER_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    let _ = log::set_logger(&StderrLog);
    log::set_max_level(level);
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emberd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let context = || format!("cannot load model {}", args.model.display());
    let file = ModelFile::open(&args.model).with_context(context)?;
    let ModelFile::Image(image) = &file else {
        bail!(
            "{} is a GGUF file; emberd serves Ember images (make one with `ember quantize`)",
            args.model.display()
        );
    };
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let model = TractModel::load(image, threads).with_context(context)?;
    let tokenizer = file.tokenizer().with_context(context)?;
    ember_engine::memory::release_free_heap();
    let template = match file.chat_template() {
        Some(source) => ChatTemplate::from_jinja(source).with_context(context)?,
        None => ChatTemplate::chatml(None),
    };
    let manifest = image.manifest();
    let header = ImageHeader::parse(&image.mapping()[..]).with_context(context)?;
    let capacity = args
        .context
        .unwrap_or(model.config().context_length)
        .min(model.config().context_length);
    let mut session = model.session(capacity)?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        model_name: protocol::truncated(&manifest.model_name),
        model_hash: header.manifest_sha256,
        context_length: capacity as u32,
        max_frame: MAX_FRAME as u32,
    };
    let defaults = manifest.default_sampling;
    let settings = Settings {
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_k: defaults.top_k,
            top_p: defaults.top_p,
            repetition_penalty: defaults.repetition_penalty,
            seed: args.seed,
            ..SamplingConfig::default()
        },
        max_tokens: args.max_tokens,
        stops: Vec::new(),
    };
    settings
        .sampling
        .validate()
        .context("invalid sampling settings")?;
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let chat = ChatSession::new(&mut session, &tokenizer, template, args.system.clone());

    let mut port = match &args.port {
        Some(path) => Tty::open(path, args.baud)?,
        None => {
            let pair = PtyPair::open().context("cannot create a PTY pair")?;
            // The path goes to stdout alone, for scripts; everything else to stderr.
            println!("{}", pair.path().display());
            std::io::stdout().flush()?;
            pair.into_master()?
        }
    };
    port.set_write_timeout(Duration::from_millis(args.write_timeout_ms));
    log::info!(
        "serving {} ({} threads, {} kernel, context {capacity}) on {} after {:.2} s",
        manifest.model_name,
        threads,
        model.kernel().name(),
        port.port(),
        start.elapsed().as_secs_f64()
    );
    let error = Server::new(port, chat, hello, settings).run();
    Err(error).context("the serial line failed")
}
