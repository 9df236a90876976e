//! `emberd`: serves a chat with an Ember image over a serial line.

use anyhow::{Context, Result, bail};
use clap::Parser;
use ember_board::{Board, MemoryPlan, ModelNeeds, Serial};
use ember_core::chat::ChatTemplate;
use ember_core::flash::{FlashOutcome, Slot};
use ember_core::image::ImageHeader;
use ember_core::protocol::{self, ErrorCode, Event, Hello, MAX_FRAME, PROTOCOL_VERSION};
use ember_core::sampler::SamplingConfig;
use ember_engine::ChatSession;
use ember_flash::SlotDir;
use ember_image::Image;
use ember_serial::{PtyPair, Tty};
use ember_tokenizer::Tokenizer;
use ember_tract::{CpuReport, TractModel};
use emberd::server::{Exit, Server, Settings, Wire};
use std::fmt::Write as _;
use std::io::Write as _;
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
    /// Board profile: a name from boards/ or the path of a .toml profile. It gives the serial
    /// line, baud, threads, memory budget and model slot; the options below override it.
    #[arg(long, value_name = "NAME|FILE")]
    board: Option<String>,
    /// Serve this Ember image (made by `ember quantize`) as it is; such a device cannot be
    /// flashed. Without it emberd serves the active slot of --slot-dir (or the board's); with
    /// none of the three, the default model's image (SmolLM2-135M-Instruct), which `ember chat`
    /// fetches and quantizes into $EMBER_HOME on first use (emberd does neither).
    #[arg(long, conflicts_with = "slot_dir")]
    model: Option<PathBuf>,
    /// The model slots: serve the active one (SLOT_DIR/slot-a.ember on a first start) and take
    /// new images over the line into the other (default with --board: the board's slot_dir).
    /// A SLOT_DIR/flash.pub key makes the device take signed images only.
    #[arg(long, value_name = "SLOT_DIR")]
    slot_dir: Option<PathBuf>,
    /// Serial device, e.g. /dev/ttyAMA0 or /dev/ttyUSB0.
    #[arg(long, required_unless_present_any = ["pty", "board"], conflicts_with = "pty")]
    port: Option<PathBuf>,
    /// Baud rate of --port (default: the board's, else 115200).
    #[arg(long)]
    baud: Option<u32>,
    /// Fastest rate a program may switch the line to for a session, e.g. to flash a model
    /// (default: the board's max_baud, else no switching).
    #[arg(long)]
    max_baud: Option<u32>,
    /// Make a PTY pair and serve on it; its device path is printed on stdout.
    #[arg(long)]
    pty: bool,
    /// With --pty: also point this symbolic link at the PTY (replaced at every start, so a
    /// host can find a restarted emberd at the same path, like a serial adapter plugged back).
    #[arg(long, requires = "pty", value_name = "PATH")]
    pty_link: Option<PathBuf>,
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
    if args.context == Some(0) {
        bail!("--context must be at least 1");
    }
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            board.as_ref().map_or(cores, |b| b.threads_or(cores))
        }
    };
    let (slot_dir, model) = match (&args.slot_dir, &args.model, &board) {
        (Some(dir), _, _) => (Some(dir.clone()), None),
        (None, Some(model), _) => (None, Some(model.clone())),
        (None, None, Some(board)) => (Some(board.slot_dir.clone()), None),
        // Development on a computer: the default model, once `ember` has made it.
        (None, None, None) => (None, Some(default_image()?)),
    };
    // An image must at least fit the budget beside the runtime; the trial boot checks the rest.
    let max_image = board
        .as_ref()
        .map(|b| b.budget_bytes().saturating_sub(ember_board::RUNTIME_BYTES));
    let mut slots = match &slot_dir {
        Some(dir) => Some(
            SlotDir::open(dir, max_image)
                .with_context(|| format!("cannot use the slot directory {}", dir.display()))?,
        ),
        None => None,
    };
    let device = Device {
        args: &args,
        board: board.as_ref(),
        threads,
    };
    if args.dry_run {
        let path = slots
            .as_ref()
            .map_or_else(|| model.clone().unwrap_or_default(), SlotDir::active_path);
        return device.dry_run(&path, slots.as_ref());
    }
    let mut wire = None;
    let mut notice = None;
    loop {
        let path = slots
            .as_ref()
            .map_or_else(|| model.clone().unwrap_or_default(), SlotDir::active_path);
        match device.serve(&path, slots.as_mut(), &mut wire, notice.take(), start)? {
            Exit::PortFailed(e) => return Err(e).context("the serial line failed"),
            Exit::Trial(line, slot) => {
                wire = Some(*line);
                let slots = slots.as_mut().context("a trial boot without slots")?;
                notice = Some(device.trial(slots, slot)?);
            }
        }
    }
}

/// The default model's image in Ember's cache, made by `ember chat` (or any `ember` command
/// given no model) on first use.
fn default_image() -> Result<PathBuf> {
    let recipe = ember_recipes::recipe(ember_recipes::DEFAULT_MODEL)?;
    let image = ember_recipes::image_path(&recipe, ember_tract::ENGINE_REVISION);
    if !image.is_file() {
        bail!(
            "no model given, and the default model ({}) is not in {} yet: run `ember chat` once \
             (it fetches and quantizes it there), or give --model IMAGE, --slot-dir or --board",
            recipe.description,
            ember_recipes::ember_home().display()
        );
    }
    Ok(image)
}

/// Prints `text` on stdout; a closed stdout (`emberd --dry-run | head -1`, a script that read
/// the PTY's path and left) is not an error.
fn print_result(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

/// What emberd was asked to run on.
struct Device<'a> {
    args: &'a Args,
    board: Option<&'a Board>,
    threads: usize,
}

/// An image opened and checked against the board.
struct Opened {
    image: Image,
    plan: Option<MemoryPlan>,
    capacity: usize,
}

impl Opened {
    /// The image's tokenizer.
    fn tokenizer(&self) -> Result<Tokenizer> {
        let manifest = self.image.manifest();
        Ok(Tokenizer::from_image(
            &manifest.tokenizer,
            &self.image.tokenizer_data()?,
        )?)
    }
}

impl Device<'_> {
    /// Opens the image at `path` and plans its memory on the board.
    fn open(&self, path: &Path) -> Result<Opened> {
        let context = || format!("cannot load model {}", path.display());
        let image = match Image::open(path) {
            Ok(image) => image,
            Err(_) if is_gguf(path) => bail!(
                "{} is a GGUF file; emberd serves Ember images (make one with `ember quantize`)",
                path.display()
            ),
            Err(e) => return Err(e).with_context(context),
        };
        let config = image.manifest().architecture;
        config.check().with_context(context)?;
        let plan = match self.board {
            Some(board) => {
                let needs = ModelNeeds {
                    image_bytes: image.file_size(),
                    cache_bytes_per_position: config.cache_values_per_position()
                        * ember_tract::CACHE_BYTES_PER_VALUE,
                    context_length: config.context_length,
                };
                let plan = board
                    .plan_memory(&needs, self.args.context)
                    .with_context(|| format!("{} does not fit {}", path.display(), board.name))?;
                log::info!("board {}: {plan}", board.name);
                Some(plan)
            }
            None => None,
        };
        let capacity = match plan {
            Some(plan) => plan.context,
            None => self
                .args
                .context
                .unwrap_or(config.context_length)
                .min(config.context_length),
        };
        Ok(Opened {
            image,
            plan,
            capacity,
        })
    }

    fn dry_run(&self, path: &Path, slots: Option<&SlotDir>) -> Result<()> {
        let opened = self.open(path)?;
        let image = &opened.image;
        let args = self.args;
        let cpu = CpuReport::detect();
        let mut out = String::new();
        writeln!(
            out,
            "model    {} ({})",
            path.display(),
            image.manifest().model_name
        )?;
        match self.board {
            Some(board) => {
                writeln!(
                    out,
                    "board    {} — {} ({})",
                    board.name, board.description, board.target
                )?;
                writeln!(
                    out,
                    "serial   {} at {} baud",
                    board.serial,
                    args.baud.unwrap_or(board.baud)
                )?;
            }
            None => writeln!(out, "board    none (no memory budget)")?,
        }
        match slots {
            Some(slots) => writeln!(
                out,
                "slots    {}: slot {} active, {}",
                slots.dir().display(),
                slots.table().active,
                if slots.requires_signature() {
                    "signed images only"
                } else {
                    "unsigned images accepted"
                }
            )?,
            None => writeln!(out, "slots    none (a fixed --model cannot be flashed)")?,
        }
        writeln!(out, "context  {} positions", opened.capacity)?;
        if let Some(plan) = opened.plan {
            writeln!(out, "memory   {plan}")?;
        }
        writeln!(out, "threads  {}", self.threads)?;
        writeln!(out, "int8     {}", cpu.int8.name())?;
        writeln!(out, "tract    {}", cpu.tract_isa)?;
        if let Some(kind) = &cpu.tract_cpu {
            writeln!(out, "tuned    {kind}")?;
        }
        print_result(&out)
    }

    /// Loads the image at `path` and serves it on the line (opened on first use) until the
    /// line fails or a flashed image waits for its trial boot. `notice` is sent first.
    fn serve(
        &self,
        path: &Path,
        slots: Option<&mut SlotDir>,
        wire: &mut Option<Wire<Tty>>,
        notice: Option<Event>,
        start: Instant,
    ) -> Result<Exit<Tty>> {
        let args = self.args;
        let context = || format!("cannot load model {}", path.display());
        let opened = self.open(path)?;
        let image = &opened.image;
        let model = TractModel::load(image, self.threads).with_context(context)?;
        let tokenizer = opened.tokenizer().with_context(context)?;
        ember_engine::memory::release_free_heap();
        let template = match image.manifest().chat_template.as_deref() {
            Some(source) => ChatTemplate::from_jinja(source).with_context(context)?,
            None => ChatTemplate::chatml(None),
        };
        let manifest = image.manifest();
        let header = ImageHeader::parse(&image.mapping()[..]).with_context(context)?;
        let capacity = opened.capacity;
        let mut session = model.session(capacity)?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            model_name: protocol::truncated(&manifest.model_name),
            model_hash: header.manifest_sha256,
            context_length: capacity as u32,
            max_frame: MAX_FRAME as u32,
            slot: slots.as_ref().map(|s| s.table().active),
            last_flash: slots.as_ref().and_then(|s| s.table().last),
            max_baud: 0,
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
        let chat = ChatSession::new(&mut session, &tokenizer, template, args.system.clone());
        let mut line = match wire.take() {
            Some(line) => line,
            None => {
                let (port, baud) = self.open_line()?;
                let max_baud = args
                    .max_baud
                    .or(self.board.map(|b| b.max_baud))
                    .unwrap_or(baud);
                Wire::new(port, baud, max_baud)
            }
        };
        let hello = Hello {
            max_baud: line.max_baud(),
            ..hello
        };
        if let Some(notice) = notice {
            line.announce(&notice);
        }
        log::info!(
            "serving {} ({} threads, {} kernel, context {capacity}{}) after {:.2} s",
            manifest.model_name,
            self.threads,
            model.kernel().name(),
            slots
                .as_ref()
                .map_or(String::new(), |s| format!(", slot {}", s.table().active)),
            start.elapsed().as_secs_f64()
        );
        Ok(Server::new(line, chat, hello, settings, slots).run())
    }

    /// Opens the serial line (or makes the PTY pair); returns it and its baud rate.
    fn open_line(&self) -> Result<(Tty, u32)> {
        let args = self.args;
        let serial = match (&args.port, args.pty, self.board) {
            (Some(path), _, _) => Serial::Device(path.clone()),
            (None, true, _) => Serial::Pty,
            (None, false, Some(board)) => board.serial.clone(),
            (None, false, None) => bail!("give --port DEVICE or --pty"),
        };
        let baud = args.baud.or(self.board.map(|b| b.baud)).unwrap_or(115_200);
        let mut port = match &serial {
            Serial::Device(path) => Tty::open(path, baud)?,
            Serial::Pty => {
                let pair = PtyPair::open().context("cannot create a PTY pair")?;
                if let Some(link) = &args.pty_link {
                    link_to(link, pair.path())?;
                }
                // The path goes to stdout alone, for scripts; everything else to stderr.
                print_result(&format!("{}\n", pair.path().display()))?;
                pair.into_master()?
            }
        };
        port.set_write_timeout(Duration::from_millis(args.write_timeout_ms));
        log::info!("on {} at {baud} baud", port.port());
        Ok((port, baud))
    }

    /// Boots the image in `slot` on trial: it must fit the board and pass its self-test to
    /// become active; otherwise the device goes back to the active slot. Returns what to tell
    /// the host.
    fn trial(&self, slots: &mut SlotDir, slot: Slot) -> Result<Event> {
        let path = slots.path(slot);
        let started = Instant::now();
        match self.self_test(&path) {
            Ok(model_hash) => {
                slots.activate()?;
                log::info!(
                    "flash: slot {slot} passed its self-test in {:.2} s and is active",
                    started.elapsed().as_secs_f64()
                );
                Ok(Event::FlashDone { slot, model_hash })
            }
            Err(e) => {
                slots.roll_back(FlashOutcome::SelfTestFailed)?;
                let detail = format!("slot {} stays active: {e:#}", slots.table().active);
                log::warn!("flash: slot {slot} failed its trial: {detail}");
                Ok(Event::Error {
                    code: ErrorCode::SelfTestFailed,
                    detail: protocol::truncated(&detail),
                })
            }
        }
    }

    /// Opens the image at `path`, checks it against the board, runs its self-test; returns
    /// its manifest hash.
    fn self_test(&self, path: &Path) -> Result<[u8; 32]> {
        let opened = self.open(path)?;
        let image = &opened.image;
        let tokenizer = opened.tokenizer()?;
        let tokens = ember_tract::self_test(image, &tokenizer, self.threads)?;
        let expected = &image.manifest().self_test;
        if tokens != expected.tokens {
            bail!(
                "self-test failed: {:?} continued as {:?}, the image expects {:?}",
                expected.prompt,
                tokenizer.decode(&tokens),
                tokenizer.decode(&expected.tokens)
            );
        }
        Ok(ImageHeader::parse(&image.mapping()[..])?.manifest_sha256)
    }
}

/// Whether the file at `path` starts with GGUF's magic bytes.
fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut magic))
        .is_ok_and(|()| &magic == b"GGUF")
}

/// Points the symbolic link `link` at `target`, replacing it atomically.
fn link_to(link: &Path, target: &Path) -> Result<()> {
    let mut temp = link.as_os_str().to_owned();
    temp.push(".new");
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(target, &temp)
        .and_then(|()| std::fs::rename(&temp, link))
        .with_context(|| format!("cannot link {} to {}", link.display(), target.display()))
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
