//! `emberd`: serves a chat with an Ember image over a serial line.

use anyhow::{Context, Result, bail};
use clap::Parser;
use ember_board::{Board, Serial};
use ember_boot::{Boot, Defaults, Source};
use ember_core::device::{self, IDLE_TIMEOUT, LineConfig, Model};
use ember_serial::Tty;
use ember_signals::Delay;
use emberd::driver::{Driver, Panel};
use std::io::Write as _;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
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
emberd --pty                                (the default model, once `ember chat` has made it)\n  \
emberd --slot-dir slots --pty --pty-link /tmp/ember-tty   (flashable: `ember flash X.ember --port /tmp/ember-tty`)\n  \
emberd --board rpi-zero-2w --model smollm2.ember --dry-run   (memory plan and kernels)\n\
Boards: rpi5, rpi4, rpi-zero-2w, rpi3-armv7, x86_64-pty (profiles in boards/), or a profile file."
)]
struct Args {
    /// Board profile (a name from boards/ or a .toml file): serial line, baud, threads, memory
    /// budget, model slots, status LED and cancel button; the options below override it.
    #[arg(long, value_name = "NAME|FILE")]
    board: Option<String>,
    /// Serve this Ember image (from `ember quantize`) as it is: it cannot be flashed. Default:
    /// the active slot of --slot-dir or the board's, else the default model's image (SmolLM2-
    /// 135M-Instruct), which `ember chat` makes in $EMBER_HOME on first use (emberd does not).
    #[arg(long, conflicts_with = "slot_dir")]
    model: Option<PathBuf>,
    /// Model slots: serve the active one, take new images into the other (default with --board:
    /// its slot_dir). SLOT_DIR/flash.pub (keys, one a line) admits images signed by one only; an
    /// older image than the active one is refused unless SLOT_DIR/allow-downgrade exists.
    #[arg(long, value_name = "SLOT_DIR")]
    slot_dir: Option<PathBuf>,
    /// Serial device, e.g. /dev/ttyAMA0 or /dev/ttyUSB0.
    #[arg(long, required_unless_present_any = ["pty", "board"], conflicts_with = "pty")]
    port: Option<PathBuf>,
    /// Baud rate of --port (default: the board's, else 115200).
    #[arg(long)]
    baud: Option<u32>,
    /// Fastest rate a program may switch the line to, e.g. to flash (default: the board's).
    #[arg(long)]
    max_baud: Option<u32>,
    /// Make a PTY pair and serve on it; its device path is printed on stdout.
    #[arg(long)]
    pty: bool,
    /// With --pty: also point this symbolic link at the PTY (a stable path across restarts).
    #[arg(long, requires = "pty", value_name = "PATH")]
    pty_link: Option<PathBuf>,
    /// Worker threads for the model (default: the board's, else all cores).
    #[arg(long)]
    threads: Option<NonZeroUsize>,
    /// Context positions (default: the model's, or the longest that fits the board's memory).
    #[arg(long)]
    context: Option<NonZeroUsize>,
    /// System prompt (default: the model's).
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
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
    /// Back to line mode after this many seconds without a program's request (0: never).
    #[arg(long, default_value_t = IDLE_TIMEOUT.as_secs())]
    idle_timeout_s: u64,
    /// Print the board, memory plan and kernels, then exit (no weights loaded, no line opened).
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    // Logs go to stderr; `EMBER_LOG=debug` shows more, `EMBER_LOG=warn` less.
    env_logger::Builder::new()
        .parse_env(env_logger::Env::new().filter_or("EMBER_LOG", "info"))
        .format(|out, r| {
            writeln!(
                out,
                "emberd: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            )
        })
        .init();
    match run(Args::parse(), Instant::now()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emberd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, start: Instant) -> Result<()> {
    let board = args.board.as_deref().map(Board::find).transpose()?;
    // SAFETY: no thread has started yet (only the argument parser and the logger ran).
    if let Some(b) = &board
        && !unsafe { b.export_cpu_settings() }
    {
        let (name, target) = (&b.name, &b.target);
        log::warn!("board {name} is {target}: its CPU settings do not apply");
    }
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let board_threads = board.as_ref().map_or(cores, |b| b.threads_or(cores));
    let threads = args.threads.map_or(board_threads, NonZeroUsize::get);
    let (dir, model) = (args.slot_dir.as_deref(), args.model.as_deref());
    let mut source = match Source::choose(board.as_ref(), dir, model)? {
        Some(source) => source,
        // Development on a computer: the default model, once `ember` has made it.
        None => Source::Image(ember_recipes::default_image(ember_tract::ENGINE_REVISION)?),
    };
    let boot = Boot {
        board: board.as_ref(),
        context: args.context.map(NonZeroUsize::get),
        threads,
    };
    if args.dry_run {
        return Ok(print_result(&boot.report(&source, args.baud)?)?);
    }
    let defaults = Defaults {
        temperature: args.temperature,
        seed: args.seed,
        max_tokens: args.max_tokens,
        system: args.system.clone(),
    };
    let mut driver: Option<Driver<Tty, Delay>> = None;
    Err(boot.run(
        &mut source,
        &defaults,
        start,
        |chat, model, notice, slots| {
            let driver = match &mut driver {
                Some(driver) => driver.load(model),
                None => driver.insert(open_line(&args, board.as_ref(), model)?),
            };
            if let Some(notice) = notice {
                driver.device.send(&notice);
            }
            driver.serve(chat, slots).context("the serial line failed")
        },
    ))
}

/// Prints `text` on stdout; a closed stdout (`emberd --dry-run | head -1`) is not an error.
fn print_result(text: &str) -> std::io::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// Opens the serial line (or makes the PTY pair) and the board's signals: the device, in line
/// mode, serving `model`.
fn open_line(args: &Args, board: Option<&Board>, model: Model) -> Result<Driver<Tty, Delay>> {
    let device = match (&args.port, args.pty, board.map(|b| &b.serial)) {
        (Some(path), _, _) | (None, false, Some(Serial::Device(path))) => Some(path.as_path()),
        (None, true, _) | (None, false, Some(Serial::Pty)) => None,
        (None, false, None) => bail!("give --port DEVICE or --pty"),
    };
    let baud = args.baud.or(board.map(|b| b.baud)).unwrap_or(115_200);
    // A PTY's path goes to stdout alone, for scripts; everything else to stderr.
    let announce = |path: &Path| print_result(&format!("{}\n", path.display()));
    let mut port = ember_serial::open_line(device, baud, args.pty_link.as_deref(), announce)?;
    port.set_write_timeout(Duration::from_millis(args.write_timeout_ms));
    log::info!("on {} at {baud} baud", port.port());
    let config = LineConfig {
        baud,
        max_baud: args.max_baud.or(board.map(|b| b.max_baud)).unwrap_or(baud),
        rates: &ember_serial::STANDARD_BAUDS,
        idle_timeout: Some(Duration::from_secs(args.idle_timeout_s)).filter(|t| !t.is_zero()),
    };
    let device = device::Device::new(config, model, Duration::ZERO);
    let signals = board.and_then(|b| b.signals.as_ref());
    let panel = signals.map(ember_signals::open_signals).transpose()?;
    let panel = panel.map(|mut p| Box::new(move |doing, now| p.update(doing, now)) as Panel);
    Ok(Driver::new(port, Delay, device, panel))
}
