//! `emberd`: serves a chat with an Ember image over a serial line.

use anyhow::{Context, Result, bail};
use clap::Parser;
use ember_board::{Board, ModelNeeds, Serial};
use ember_core::chat::ChatTemplate;
use ember_core::image::ImageHeader;
use ember_core::protocol::{self, Hello, MAX_FRAME, PROTOCOL_VERSION};
use ember_core::sampler::SamplingConfig;
use ember_engine::{ChatSession, ModelFile, WeightSource};
use ember_serial::{PtyPair, Tty};
use ember_tract::{CpuReport, TractModel};
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
    after_help = "Examples:\n  emberd --board rpi5                      (the board's UART, baud, threads and model slot)\n  \
emberd --port /dev/ttyAMA0 --baud 115200 --model smollm2.ember\n  \
emberd --pty --model smollm2.ember          (development: picocom the printed path)\n  \
emberd --board rpi-zero-2w --model smollm2.ember --dry-run   (memory plan and kernels)\n\
Boards: rpi5, rpi4, rpi-zero-2w, rpi3-armv7, x86_64-pty (profiles in boards/), or a profile file."
)]
struct Args {
    /// Board profile: a name from boards/ or the path of a .toml profile. It gives the serial
    /// line, baud, threads, memory budget and model slot; the options below override it.
    #[arg(long, value_name = "NAME|FILE")]
    board: Option<String>,
    /// The Ember image to serve (made by `ember quantize`; default with --board:
    /// SLOT_DIR/model.ember).
    #[arg(long, required_unless_present = "board")]
    model: Option<PathBuf>,
    /// Serial device, e.g. /dev/ttyAMA0 or /dev/ttyUSB0.
    #[arg(long, required_unless_present_any = ["pty", "board"], conflicts_with = "pty")]
    port: Option<PathBuf>,
    /// Baud rate of --port (default: the board's, else 115200).
    #[arg(long)]
    baud: Option<u32>,
    /// Make a PTY pair and serve on it; its device path is printed on stdout.
    #[arg(long)]
    pty: bool,
    /// Worker threads for the model (default: the board's, else all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Context positions (default: the model's, or with --board the longest that fits the
    /// board's memory budget); the oldest turns are dropped when it is full.
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
    /// Print the board, the memory plan and the kernels the engine will use, then exit without
    /// loading the weights or opening the line.
    #[arg(long)]
    dry_run: bool,
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
    let board = args.board.as_deref().map(Board::find).transpose()?;
    if let Some(board) = &board {
        use_board_cpu_settings(board);
    }
    let model_path = match (&args.model, &board) {
        (Some(path), _) => path.clone(),
        (None, Some(board)) => board.slot_dir.join("model.ember"),
        (None, None) => bail!("--model is required without --board"),
    };
    let context = || format!("cannot load model {}", model_path.display());
    let file = ModelFile::open(&model_path).with_context(context)?;
    let ModelFile::Image(image) = &file else {
        bail!(
            "{} is a GGUF file; emberd serves Ember images (make one with `ember quantize`)",
            model_path.display()
        );
    };
    let config = image.config().with_context(context)?;
    if args.context == Some(0) {
        bail!("--context must be at least 1");
    }
    let plan = match &board {
        Some(board) => {
            let needs = ModelNeeds {
                image_bytes: image.file_size(),
                cache_bytes_per_position: config.cache_bytes_per_position(),
                context_length: config.context_length,
            };
            let plan = board
                .plan_memory(&needs, args.context)
                .with_context(|| format!("{} does not fit {}", model_path.display(), board.name))?;
            log::info!("board {}: {plan}", board.name);
            Some(plan)
        }
        None => None,
    };
    let capacity = match plan {
        Some(plan) => plan.context,
        None => args
            .context
            .unwrap_or(config.context_length)
            .min(config.context_length),
    };
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            board.as_ref().map_or(cores, |b| b.threads_or(cores))
        }
    };
    if args.dry_run {
        let cpu = CpuReport::detect();
        println!(
            "model    {} ({})",
            model_path.display(),
            image.manifest().model_name
        );
        match &board {
            Some(board) => {
                println!(
                    "board    {} — {} ({})",
                    board.name, board.description, board.target
                );
                println!(
                    "serial   {} at {} baud",
                    board.serial,
                    args.baud.unwrap_or(board.baud)
                );
            }
            None => println!("board    none (no memory budget)"),
        }
        println!("context  {capacity} positions");
        if let Some(plan) = plan {
            println!("memory   {plan}");
        }
        println!("threads  {threads}");
        println!("int8     {}", cpu.int8.name());
        println!("tract    {}", cpu.tract_isa);
        if let Some(kind) = &cpu.tract_cpu {
            println!("tuned    {kind}");
        }
        return Ok(());
    }
    let model = TractModel::load(image, threads).with_context(context)?;
    let tokenizer = file.tokenizer().with_context(context)?;
    ember_engine::memory::release_free_heap();
    let template = match file.chat_template() {
        Some(source) => ChatTemplate::from_jinja(source).with_context(context)?,
        None => ChatTemplate::chatml(None),
    };
    let manifest = image.manifest();
    let header = ImageHeader::parse(&image.mapping()[..]).with_context(context)?;
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

    let serial = match (&args.port, args.pty, &board) {
        (Some(path), _, _) => Serial::Device(path.clone()),
        (None, true, _) => Serial::Pty,
        (None, false, Some(board)) => board.serial.clone(),
        (None, false, None) => bail!("give --port DEVICE or --pty"),
    };
    let baud = args
        .baud
        .or(board.as_ref().map(|b| b.baud))
        .unwrap_or(115_200);
    let mut port = match &serial {
        Serial::Device(path) => Tty::open(path, baud)?,
        Serial::Pty => {
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

/// Sets the board's CPU knobs for tract (unless the environment already has them), and warns when
/// the board is for another architecture than this build.
fn use_board_cpu_settings(board: &Board) {
    if board.architecture() != std::env::consts::ARCH {
        log::warn!(
            "board {} is {}, this emberd is {}: its memory budget applies, its CPU settings do not",
            board.name,
            board.target,
            std::env::consts::ARCH
        );
        return;
    }
    for (name, value) in &board.env {
        if std::env::var_os(name).is_none() {
            // SAFETY: emberd has not started any thread yet (only the argument parser and the
            // logger ran), so nothing reads the environment concurrently.
            unsafe { std::env::set_var(name, value) };
        }
    }
}
