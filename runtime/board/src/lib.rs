//! Board profiles: what Ember needs to know about the computer it runs on.
//!
//! A profile (one TOML file in the repository's `boards/`, compiled into this crate) names the
//! Rust target, the serial line and its baud rates, how many threads the model gets, how much
//! memory Ember may use, where models live, and CPU-feature settings for the engine. `emberd
//! --board NAME` serves with one; `ember package --board NAME` bundles one with the binary for
//! its target. [`Board::plan_memory`] decides whether a model fits the board's memory budget.
//!
//! # Board signals
//!
//! A kiosk may have a status LED and a cancel button on GPIO lines. An optional `[signals]`
//! table names them ([`BoardSignals`]); no built-in profile sets one (`boards/rpi5.toml` has a
//! commented example), and without it there are none. `ember-signals` opens the lines.
//!
//! ```toml
//! [signals]
//! gpio_chip = "/dev/gpiochip0" # the GPIO character device (default /dev/gpiochip0)
//! status_led = 17              # line offset of the LED, lit when driven high (unset: no LED)
//! cancel_button = 27           # line offset of the button (unset: no button)
//! button_active_low = true     # pressed reads low: a button to ground (default true)
//! debounce_ms = 30             # a press or release counts once steady this long (default 30)
//! ```
//!
//! Line offsets are the chip's own numbers (on a Raspberry Pi, the BCM GPIO numbers of the
//! header's chip). The table is checked like the rest: a `/dev` path, at least one line, two
//! different lines, `debounce_ms` at most 1000, no other keys.

#![warn(missing_docs)]

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The profiles in `boards/`, by name, as compiled into this crate.
pub const BUILTIN: &[(&str, &str)] = &[
    ("rpi5", include_str!("../../../boards/rpi5.toml")),
    ("rpi4", include_str!("../../../boards/rpi4.toml")),
    (
        "rpi-zero-2w",
        include_str!("../../../boards/rpi-zero-2w.toml"),
    ),
    (
        "rpi3-armv7",
        include_str!("../../../boards/rpi3-armv7.toml"),
    ),
    (
        "x86_64-pty",
        include_str!("../../../boards/x86_64-pty.toml"),
    ),
];

/// The Rust targets Ember builds for (each has a linker and a qemu runner in `.cargo/config.toml`
/// unless it is the development machine's own).
pub const TARGETS: &[&str] = &[
    "aarch64-unknown-linux-gnu",
    "armv7-unknown-linux-gnueabihf",
    "x86_64-unknown-linux-gnu",
];

/// Memory the runtime itself needs besides the image and the KV cache: tract's plan and scratch
/// buffers, the tokenizer, the serial server. Measured: SmolLM2's RssAnon after loading and one
/// reply was 26.5 MB (README, issue 3); rounded up.
pub const RUNTIME_BYTES: u64 = 32 * MIB;

/// Contexts chosen to fit a budget are multiples of this many positions.
pub const CONTEXT_STEP: usize = 256;

const MIB: u64 = 1024 * 1024;

/// One board.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Short name, as given to `--board` (the profile's file name without `.toml`).
    pub name: String,
    /// One line for people.
    pub description: String,
    /// Rust target triple of the board's userland.
    pub target: String,
    /// The core as qemu names it (`-cpu`), so emulated runs see the board's CPU features.
    #[serde(default)]
    pub qemu_cpu: Option<String>,
    /// CPU cores, if the board has a fixed number.
    #[serde(default)]
    pub cores: Option<usize>,
    /// Worker threads for the model (unset: every core the machine has).
    #[serde(default)]
    pub threads: Option<usize>,
    /// RAM of the smallest variant of the board, in MiB.
    pub ram_mib: u64,
    /// Memory Ember may use (image, KV cache, runtime), in MiB.
    pub memory_budget_mib: u64,
    /// Where the chat happens.
    pub serial: Serial,
    /// Baud rate the line starts at.
    pub baud: u32,
    /// Fastest baud rate the board's UART runs reliably.
    pub max_baud: u32,
    /// Directory holding the board's models.
    pub slot_dir: PathBuf,
    /// Environment variables for the engine (tract's CPU knobs), set unless already set.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// GPIO lines for a status LED and a cancel button (`[signals]`); none unless given.
    #[serde(default)]
    pub signals: Option<BoardSignals>,
}

/// A kiosk's board signals: the `[signals]` table of a profile (see the [crate] docs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardSignals {
    /// The GPIO character device holding the lines (`gpio_chip`, default `/dev/gpiochip0`).
    #[serde(default = "BoardSignals::default_gpio_chip")]
    pub gpio_chip: PathBuf,
    /// Line offset of the status LED, lit when the line is driven high (`status_led`; unset: no
    /// LED).
    #[serde(default)]
    pub status_led: Option<u32>,
    /// Line offset of the cancel button (`cancel_button`; unset: no button).
    #[serde(default)]
    pub cancel_button: Option<u32>,
    /// Whether the button reads low while pressed (`button_active_low`, default `true`: a button
    /// to ground, with a pull-up on the line).
    #[serde(default = "BoardSignals::default_active_low")]
    pub button_active_low: bool,
    /// How long the button must read steadily pressed (or released) for the change to count, in
    /// milliseconds (`debounce_ms`, default [`BoardSignals::DEFAULT_DEBOUNCE_MS`]).
    #[serde(default = "BoardSignals::default_debounce_ms")]
    pub debounce_ms: u32,
}

impl BoardSignals {
    /// The debounce window when a profile gives none: longer than a typical switch's bounce
    /// (a few ms), shorter than a deliberate press (100 ms or more).
    pub const DEFAULT_DEBOUNCE_MS: u32 = 30;

    /// The longest debounce window a profile may ask for.
    pub const MAX_DEBOUNCE_MS: u32 = 1000;

    fn default_gpio_chip() -> PathBuf {
        PathBuf::from("/dev/gpiochip0")
    }

    fn default_active_low() -> bool {
        true
    }

    fn default_debounce_ms() -> u32 {
        Self::DEFAULT_DEBOUNCE_MS
    }

    /// The first impossible thing in the table, if any.
    pub fn check(&self) -> Result<(), Problem> {
        if !self.gpio_chip.starts_with("/dev/") || self.gpio_chip == Path::new("/dev/") {
            return Err(Problem::GpioChip(self.gpio_chip.clone()));
        }
        match (self.status_led, self.cancel_button) {
            (None, None) => return Err(Problem::NoSignals),
            (Some(led), Some(button)) if led == button => return Err(Problem::SameLine(led)),
            _ => {}
        }
        if self.debounce_ms > Self::MAX_DEBOUNCE_MS {
            return Err(Problem::Debounce(self.debounce_ms));
        }
        Ok(())
    }
}

/// The serial line of a board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// A PTY pair made at start (development machines); its path is printed.
    Pty,
    /// A UART device such as `/dev/serial0`.
    Device(PathBuf),
}

impl<'de> Deserialize<'de> for Serial {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(if text == "pty" {
            Serial::Pty
        } else {
            Serial::Device(PathBuf::from(text))
        })
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Serial::Pty => f.write_str("a PTY pair"),
            Serial::Device(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A profile that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// No built-in board has this name (and it is not a profile file).
    #[error(
        "unknown board {name:?}; the boards are: {known} (or give the path of a .toml profile)"
    )]
    Unknown {
        /// The name asked for.
        name: String,
        /// The built-in names, comma-separated.
        known: String,
    },
    /// A profile file could not be read.
    #[error("cannot read board profile {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A profile is not TOML of the right shape.
    #[error("board profile {origin} is malformed: {message}")]
    Parse {
        /// Where the profile came from.
        origin: String,
        /// The TOML parser's message.
        message: String,
    },
    /// A profile parses but says something impossible.
    #[error("board profile {origin}: {problem}")]
    Invalid {
        /// Where the profile came from.
        origin: String,
        /// What is wrong.
        problem: Problem,
    },
}

/// Something impossible in a profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The name is empty or not a plain word.
    #[error("name {0:?} must be letters, digits, '-' and '_'")]
    Name(String),
    /// The target is not one Ember builds for.
    #[error("target {0:?} is not one Ember builds for ({targets})", targets = TARGETS.join(", "))]
    Target(String),
    /// Zero cores or threads.
    #[error("cores and threads must be at least 1")]
    NoThreads,
    /// More threads than cores.
    #[error("threads ({threads}) exceed the board's cores ({cores})")]
    ThreadsOverCores {
        /// Threads asked for.
        threads: usize,
        /// Cores the board has.
        cores: usize,
    },
    /// A zero memory budget, or one above the RAM.
    #[error("memory_budget_mib ({budget}) must be between 1 and ram_mib ({ram})")]
    Budget {
        /// The budget.
        budget: u64,
        /// The RAM.
        ram: u64,
    },
    /// A baud rate out of range, or a maximum below the start rate.
    #[error("baud rates must satisfy 1200 <= baud ({baud}) <= max_baud ({max_baud}) <= 4000000")]
    Baud {
        /// Start rate.
        baud: u32,
        /// Fastest rate.
        max_baud: u32,
    },
    /// The serial device is not a device path.
    #[error("serial must be \"pty\" or a path under /dev, not {0:?}")]
    Serial(PathBuf),
    /// The slot directory is relative.
    #[error("slot_dir must be an absolute path, not {0:?}")]
    SlotDir(PathBuf),
    /// An environment variable name that the engine does not read.
    #[error("env may only set tract's CPU knobs (TRACT_CPU_*, TRACT_DOTPROD_DISABLE), not {0:?}")]
    Env(String),
    /// `[signals]` names a GPIO chip that is not a device path.
    #[error("signals: gpio_chip must be a path under /dev, not {0:?}")]
    GpioChip(PathBuf),
    /// `[signals]` names no line.
    #[error("signals: set status_led, cancel_button or both (or leave out the table)")]
    NoSignals,
    /// `[signals]` puts the LED and the button on one line.
    #[error("signals: status_led and cancel_button are both line {0}")]
    SameLine(u32),
    /// A debounce window over [`BoardSignals::MAX_DEBOUNCE_MS`].
    #[error(
        "signals: debounce_ms ({0}) must be at most {max}",
        max = BoardSignals::MAX_DEBOUNCE_MS
    )]
    Debounce(u32),
}

impl Board {
    /// The built-in board called `name`.
    pub fn builtin(name: &str) -> Result<Board, BoardError> {
        let (_, text) = BUILTIN
            .iter()
            .find(|(builtin, _)| *builtin == name)
            .ok_or_else(|| BoardError::Unknown {
                name: name.to_string(),
                known: BUILTIN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Board::parse(text, &format!("boards/{name}.toml"))
    }

    /// Every built-in board.
    pub fn all() -> Result<Vec<Board>, BoardError> {
        BUILTIN
            .iter()
            .map(|(name, _)| Board::builtin(name))
            .collect()
    }

    /// A built-in board by name, or a profile file when `name_or_path` ends in `.toml` or has a
    /// directory part.
    pub fn find(name_or_path: &str) -> Result<Board, BoardError> {
        Ok(Board::find_with_text(name_or_path)?.0)
    }

    /// Like [`Board::find`], with the profile's TOML text (to ship it as written).
    pub fn find_with_text(name_or_path: &str) -> Result<(Board, String), BoardError> {
        let path = Path::new(name_or_path);
        if name_or_path.ends_with(".toml") || path.components().count() > 1 {
            Board::read(path)
        } else {
            let board = Board::builtin(name_or_path)?;
            let (_, text) = BUILTIN
                .iter()
                .find(|(n, _)| *n == name_or_path)
                .expect("found above");
            Ok((board, text.to_string()))
        }
    }

    /// Reads and checks the profile at `path`.
    pub fn load(path: &Path) -> Result<Board, BoardError> {
        Ok(Board::read(path)?.0)
    }

    fn read(path: &Path) -> Result<(Board, String), BoardError> {
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok((Board::parse(&text, &path.display().to_string())?, text))
    }

    /// Parses and checks a profile; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Board, BoardError> {
        let board: Board = toml::from_str(text).map_err(|e| BoardError::Parse {
            origin: origin.to_string(),
            message: e.message().to_string(),
        })?;
        board.check().map_err(|problem| BoardError::Invalid {
            origin: origin.to_string(),
            problem,
        })?;
        Ok(board)
    }

    /// The first impossible thing in the profile, if any.
    pub fn check(&self) -> Result<(), Problem> {
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.name.is_empty() || !self.name.chars().all(plain) {
            return Err(Problem::Name(self.name.clone()));
        }
        if !TARGETS.contains(&self.target.as_str()) {
            return Err(Problem::Target(self.target.clone()));
        }
        if self.cores == Some(0) || self.threads == Some(0) {
            return Err(Problem::NoThreads);
        }
        if let (Some(threads), Some(cores)) = (self.threads, self.cores)
            && threads > cores
        {
            return Err(Problem::ThreadsOverCores { threads, cores });
        }
        if self.memory_budget_mib == 0 || self.memory_budget_mib > self.ram_mib {
            return Err(Problem::Budget {
                budget: self.memory_budget_mib,
                ram: self.ram_mib,
            });
        }
        if !(1200 <= self.baud && self.baud <= self.max_baud && self.max_baud <= 4_000_000) {
            return Err(Problem::Baud {
                baud: self.baud,
                max_baud: self.max_baud,
            });
        }
        if let Serial::Device(path) = &self.serial
            && (!path.starts_with("/dev/") || path == Path::new("/dev/"))
        {
            return Err(Problem::Serial(path.clone()));
        }
        if !self.slot_dir.is_absolute() {
            return Err(Problem::SlotDir(self.slot_dir.clone()));
        }
        if let Some(name) = self
            .env
            .keys()
            .find(|k| !(k.starts_with("TRACT_CPU_") || *k == "TRACT_DOTPROD_DISABLE"))
        {
            return Err(Problem::Env(name.clone()));
        }
        if let Some(signals) = &self.signals {
            signals.check()?;
        }
        Ok(())
    }

    /// The board's architecture as Rust names it (`std::env::consts::ARCH`: `aarch64`, `arm`,
    /// `x86_64`).
    pub fn architecture(&self) -> &str {
        let arch = self.target.split('-').next().unwrap_or_default();
        if arch.starts_with("armv7") {
            "arm"
        } else {
            arch
        }
    }

    /// Threads for the model: the profile's, else `available`.
    pub fn threads_or(&self, available: usize) -> usize {
        self.threads.unwrap_or(available).max(1)
    }

    /// Sets this board's CPU settings for the engine (its `[env]` table) in the process
    /// environment, each unless the environment already sets it; nothing when this build is not
    /// for the board's architecture (then it returns false).
    ///
    /// # Safety
    ///
    /// No other thread may read or write the environment meanwhile: call it before starting any.
    pub unsafe fn export_cpu_settings(&self) -> bool {
        if self.architecture() != std::env::consts::ARCH {
            return false;
        }
        for (name, value) in &self.env {
            if std::env::var_os(name).is_none() {
                // SAFETY: the caller guarantees that no other thread uses the environment.
                unsafe { std::env::set_var(name, value) };
            }
        }
        true
    }

    /// The memory budget in bytes.
    pub fn budget_bytes(&self) -> u64 {
        self.memory_budget_mib * MIB
    }

    /// How a model with `needs` fits this board: with `context` positions if given (refused if
    /// they do not fit), else with the model's full context or, failing that, the longest
    /// multiple of [`CONTEXT_STEP`] positions that fits.
    pub fn plan_memory(
        &self,
        needs: &ModelNeeds,
        context: Option<usize>,
    ) -> Result<MemoryPlan, NoFit> {
        let budget = self.budget_bytes();
        let plan = |context: usize| MemoryPlan {
            context,
            image_bytes: needs.image_bytes,
            cache_bytes: needs.cache_bytes(context),
            runtime_bytes: RUNTIME_BYTES,
            budget_bytes: budget,
        };
        let refuse = |plan: MemoryPlan, longest_fitting: Option<usize>| NoFit {
            board: self.name.clone(),
            plan,
            longest_fitting,
        };
        let full = plan(
            context
                .unwrap_or(needs.context_length)
                .min(needs.context_length),
        );
        if full.total_bytes() <= budget {
            return Ok(full);
        }
        // The sliding-window layers' caches at their largest, then the rest per position.
        let fixed = needs
            .image_bytes
            .saturating_add(RUNTIME_BYTES)
            .saturating_add(needs.windowed_cache_bytes(needs.context_length));
        let room = budget.saturating_sub(fixed) / needs.cache_bytes_per_position.max(1);
        let longest = (room as usize / CONTEXT_STEP * CONTEXT_STEP).min(needs.context_length);
        let longest = (longest >= CONTEXT_STEP).then_some(longest);
        match (context, longest) {
            (None, Some(longest)) => Ok(plan(longest)),
            (Some(_), longest) => Err(refuse(full, longest)),
            (None, None) => Err(refuse(plan(CONTEXT_STEP.min(needs.context_length)), None)),
        }
    }
}

/// What a model needs from a board's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelNeeds {
    /// Size of the image file (memory-mapped, so resident while the model runs).
    pub image_bytes: u64,
    /// KV cache per context position of the layers that attend to the whole context (keys and
    /// values).
    pub cache_bytes_per_position: u64,
    /// KV cache per position of the sliding-window layers (0 without any).
    pub windowed_cache_bytes_per_position: u64,
    /// The most positions a sliding-window layer's cache holds, however long the context.
    pub window_positions: usize,
    /// The model's own context length.
    pub context_length: usize,
}

impl ModelNeeds {
    /// The KV cache of a full context of `context` positions.
    pub fn cache_bytes(&self, context: usize) -> u64 {
        (context as u64)
            .saturating_mul(self.cache_bytes_per_position)
            .saturating_add(self.windowed_cache_bytes(context))
    }

    /// The sliding-window layers' part of [`ModelNeeds::cache_bytes`].
    fn windowed_cache_bytes(&self, context: usize) -> u64 {
        (context.min(self.window_positions) as u64)
            .saturating_mul(self.windowed_cache_bytes_per_position)
    }
}

/// Memory a model takes on a board with a given context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Context positions.
    pub context: usize,
    /// The image file.
    pub image_bytes: u64,
    /// The KV cache when the context is full.
    pub cache_bytes: u64,
    /// The runtime ([`RUNTIME_BYTES`]).
    pub runtime_bytes: u64,
    /// The board's budget.
    pub budget_bytes: u64,
}

impl MemoryPlan {
    /// Image, cache and runtime together.
    pub fn total_bytes(&self) -> u64 {
        (self.image_bytes)
            .saturating_add(self.cache_bytes)
            .saturating_add(self.runtime_bytes)
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (image {} + KV cache for {} positions {} + runtime {}) of a {} budget",
            mib(self.total_bytes()),
            mib(self.image_bytes),
            self.context,
            mib(self.cache_bytes),
            mib(self.runtime_bytes),
            mib(self.budget_bytes)
        )
    }
}

/// A model that does not fit a board's memory budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the model needs {needed} (image {image} + KV cache for {context} positions {cache} + runtime \
     {runtime}) but board {board} has a memory budget of {budget}{hint}",
    needed = mib(plan.total_bytes()),
    image = mib(plan.image_bytes),
    context = plan.context,
    cache = mib(plan.cache_bytes),
    runtime = mib(plan.runtime_bytes),
    budget = mib(plan.budget_bytes),
    hint = match longest_fitting {
        Some(n) => format!("; --context {n} fits"),
        None => "; even the smallest context does not fit: use a smaller model".to_string(),
    }
)]
pub struct NoFit {
    /// The board.
    pub board: String,
    /// The plan that was refused.
    pub plan: MemoryPlan,
    /// The longest context that would fit, if any.
    pub longest_fitting: Option<usize>,
}

/// `bytes` in MiB for people.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> Board {
        Board::builtin("rpi-zero-2w").unwrap()
    }

    const SMOLLM2: ModelNeeds = ModelNeeds {
        image_bytes: 154_691_968,
        cache_bytes_per_position: 30 * 2 * 3 * 64 * 4,
        windowed_cache_bytes_per_position: 0,
        window_positions: 0,
        context_length: 8192,
    };

    /// Gemma 3 270M's int8 image: 3 global layers and 15 with a window of 512 (which hold at
    /// most 512 + 344 positions), one KV head of 256.
    const GEMMA3: ModelNeeds = ModelNeeds {
        image_bytes: 322_636_800,
        cache_bytes_per_position: 3 * 2 * 256 * 4,
        windowed_cache_bytes_per_position: 15 * 2 * 256 * 4,
        window_positions: 856,
        context_length: 8192,
    };

    #[test]
    fn sliding_window_layers_count_only_their_window() {
        let board = Board::builtin("rpi4").unwrap();
        let plan = board.plan_memory(&GEMMA3, None).unwrap();
        assert_eq!(plan.context, 8192);
        // 8192 positions of 3 layers and 856 of 15: 48 + 25.1 MiB, not 288 MiB.
        assert_eq!(plan.cache_bytes, 8192 * 6144 + 856 * 30720);
        // Short contexts: every layer holds every position.
        let short = board.plan_memory(&GEMMA3, Some(256)).unwrap();
        assert_eq!(short.cache_bytes, 256 * (6144 + 30720));
        // A budget that holds the image, the windows and part of the context gets the longest
        // whole step of it.
        let tight = ModelNeeds {
            image_bytes: board.budget_bytes() - RUNTIME_BYTES - 856 * 30720 - 1000 * 6144,
            ..GEMMA3
        };
        let plan = board.plan_memory(&tight, None).unwrap();
        assert!(plan.total_bytes() <= board.budget_bytes(), "{plan}");
        assert_eq!(plan.context, 1000 / CONTEXT_STEP * CONTEXT_STEP);
    }

    #[test]
    fn every_builtin_profile_parses_checks_and_is_named_after_its_file() {
        for (name, _) in BUILTIN {
            let board = Board::builtin(name).unwrap();
            assert_eq!(&board.name, name);
            assert!(!board.description.is_empty());
        }
        assert_eq!(Board::all().unwrap().len(), BUILTIN.len());
    }

    #[test]
    fn architectures_are_named_as_rust_names_them() {
        let arch = |name| Board::builtin(name).unwrap().architecture().to_string();
        assert_eq!(arch("rpi5"), "aarch64");
        assert_eq!(arch("rpi3-armv7"), "arm");
        assert_eq!(arch("x86_64-pty"), "x86_64");
    }

    #[test]
    fn unknown_boards_list_the_known_ones() {
        let error = Board::builtin("rpi6").unwrap_err().to_string();
        assert!(
            error.contains("\"rpi6\"") && error.contains("rpi5, rpi4"),
            "{error}"
        );
    }

    #[test]
    fn impossible_profiles_are_refused_with_the_reason() {
        let base = BUILTIN[0].1;
        let cases = [
            (
                "target = \"aarch64-unknown-linux-gnu\"",
                "target = \"riscv64gc-unknown-linux-gnu\"",
                "is not one Ember builds for",
            ),
            (
                "threads = 4",
                "threads = 8",
                "threads (8) exceed the board's cores (4)",
            ),
            ("threads = 4", "threads = 0", "at least 1"),
            (
                "memory_budget_mib = 640",
                "memory_budget_mib = 4096",
                "between 1 and ram_mib (1024)",
            ),
            (
                "max_baud = 3000000",
                "max_baud = 9600",
                "baud (115200) <= max_baud (9600)",
            ),
            (
                "serial = \"/dev/serial0\"",
                "serial = \"serial0\"",
                "path under /dev",
            ),
            (
                "slot_dir = \"/var/lib/ember\"",
                "slot_dir = \"models\"",
                "absolute path",
            ),
            ("[env]", "[env]\nLD_PRELOAD = \"x\"", "not \"LD_PRELOAD\""),
            ("name = \"rpi5\"", "name = \"rpi 5\"", "letters, digits"),
            ("baud = 115200", "baud = \"fast\"", "malformed"),
            (
                "baud = 115200",
                "baud = 115200\ncolour = \"red\"",
                "unknown field `colour`",
            ),
            ("baud = 115200\n", "", "missing field `baud`"),
        ];
        for (from, to, message) in cases {
            assert!(base.contains(from), "{from}");
            let error = Board::parse(&base.replacen(from, to, 1), "test.toml")
                .unwrap_err()
                .to_string();
            assert!(error.contains(message), "{to}: {error}");
            assert!(error.starts_with("board profile test.toml"), "{error}");
        }
    }

    #[test]
    fn profiles_load_from_files_and_missing_files_say_so() {
        let dir = std::env::temp_dir().join(format!("ember-board-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mine.toml");
        std::fs::write(&path, BUILTIN[0].1.replace("\"rpi5\"", "\"mine\"")).unwrap();
        assert_eq!(Board::find(path.to_str().unwrap()).unwrap().name, "mine");
        let missing = dir.join("missing.toml");
        let error = Board::find(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(error, BoardError::Read { .. }), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_model_that_fits_gets_its_full_context() {
        let rpi5 = Board::builtin("rpi5").unwrap();
        let plan = rpi5.plan_memory(&SMOLLM2, None).unwrap();
        assert_eq!(plan.context, 8192);
        assert_eq!(plan.cache_bytes, 8192 * 46_080);
        assert!(plan.total_bytes() <= rpi5.budget_bytes());
    }

    #[test]
    fn a_tight_board_gets_the_longest_context_that_fits() {
        let plan = board().plan_memory(&SMOLLM2, None).unwrap();
        assert_eq!(plan.context % CONTEXT_STEP, 0);
        assert!(plan.total_bytes() <= board().budget_bytes());
        let one_step_more = plan.total_bytes() + CONTEXT_STEP as u64 * 46_080;
        assert!(one_step_more > board().budget_bytes(), "{plan}");
    }

    #[test]
    fn an_explicit_context_that_does_not_fit_is_refused_naming_both_sizes() {
        let error = board().plan_memory(&SMOLLM2, Some(8192)).unwrap_err();
        let text = error.to_string();
        assert_eq!(
            error.longest_fitting,
            Some(board().plan_memory(&SMOLLM2, None).unwrap().context)
        );
        assert!(text.contains("needs 539.5 MiB"), "{text}");
        assert!(text.contains("memory budget of 256.0 MiB"), "{text}");
        assert!(text.contains("image 147.5 MiB"), "{text}");
        assert!(text.contains("--context 1536 fits"), "{text}");
    }

    #[test]
    fn an_image_larger_than_the_budget_is_refused() {
        let huge = ModelNeeds {
            image_bytes: 300 * MIB,
            ..SMOLLM2
        };
        let error = board().plan_memory(&huge, None).unwrap_err();
        assert_eq!(error.longest_fitting, None);
        assert!(error.to_string().contains("use a smaller model"), "{error}");
        assert!(error.to_string().contains("image 300.0 MiB"), "{error}");
    }
    /// rpi5's profile with its commented `[signals]` example uncommented.
    fn rpi5_with_signals() -> String {
        let (_, text) = BUILTIN.iter().find(|(name, _)| *name == "rpi5").unwrap();
        let start = text
            .find("# [signals]")
            .expect("rpi5.toml has a [signals] example");
        let example: String = text[start..]
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n");
        format!("{}{example}\n", &text[..start])
    }

    #[test]
    fn no_profile_has_signals_and_the_rpi5_example_parses() {
        for board in Board::all().unwrap() {
            assert_eq!(board.signals, None, "{}", board.name);
        }
        let board = Board::parse(&rpi5_with_signals(), "rpi5.toml").unwrap();
        assert_eq!(
            board.signals,
            Some(BoardSignals {
                gpio_chip: PathBuf::from("/dev/gpiochip0"),
                status_led: Some(17),
                cancel_button: Some(27),
                button_active_low: true,
                debounce_ms: 30,
            })
        );
    }

    #[test]
    fn signals_take_defaults_for_what_they_leave_out() {
        let text = format!("{}\n[signals]\ncancel_button = 5\n", BUILTIN[0].1);
        let signals = Board::parse(&text, "test.toml").unwrap().signals.unwrap();
        assert_eq!(
            signals,
            BoardSignals {
                gpio_chip: PathBuf::from("/dev/gpiochip0"),
                status_led: None,
                cancel_button: Some(5),
                button_active_low: true,
                debounce_ms: BoardSignals::DEFAULT_DEBOUNCE_MS,
            }
        );
    }

    #[test]
    fn impossible_signals_are_refused_with_the_reason() {
        let base = rpi5_with_signals();
        let cases = [
            (
                "gpio_chip = \"/dev/gpiochip0\"",
                "gpio_chip = \"gpiochip0\"",
                "gpio_chip must be a path under /dev, not \"gpiochip0\"",
            ),
            (
                "cancel_button = 27",
                "cancel_button = 17",
                "status_led and cancel_button are both line 17",
            ),
            (
                "debounce_ms = 30",
                "debounce_ms = 5000",
                "debounce_ms (5000) must be at most 1000",
            ),
            ("debounce_ms = 30", "debounce_ms = -1", "malformed"),
            ("status_led = 17", "status_led = \"17\"", "malformed"),
            (
                "debounce_ms = 30",
                "debounce_ms = 30\nled_colour = \"red\"",
                "unknown field `led_colour`",
            ),
            (
                "button_active_low = true",
                "button_active_high = false",
                "unknown field `button_active_high`",
            ),
        ];
        for (from, to, message) in cases {
            assert!(base.contains(from), "{from}");
            let error = Board::parse(&base.replacen(from, to, 1), "test.toml")
                .unwrap_err()
                .to_string();
            assert!(error.contains(message), "{to}: {error}");
        }
        let empty = format!("{}\n[signals]\ndebounce_ms = 20\n", BUILTIN[0].1);
        let error = Board::parse(&empty, "test.toml").unwrap_err().to_string();
        assert!(
            error.contains("set status_led, cancel_button or both"),
            "{error}"
        );
    }

    #[test]
    fn cross_targets_have_a_linker_and_a_qemu_runner() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cargo/config.toml");
        let config: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for board in Board::all().unwrap() {
            if board.target == "x86_64-unknown-linux-gnu" {
                continue;
            }
            let target = &config["target"][&board.target];
            assert!(target.get("linker").is_some(), "{}", board.target);
            let runner = target["runner"].as_str().unwrap();
            assert!(runner.starts_with("qemu-"), "{runner}");
        }
    }
}
