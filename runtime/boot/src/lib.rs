//! What a device does with an image before it chats: [`Boot::open`] opens it and fits it to the
//! board's memory budget (the KV cache's length follows), [`Opened`] gives the line its greeting
//! and default settings, [`Boot::trial`] gives a freshly flashed image its trial boot (the
//! self-test its manifest records must give the same tokens here, or the device rolls back),
//! and [`Boot::report`] says what the device would run (`emberd --dry-run`).

#![warn(missing_docs)]

use ember_board::{Board, MemoryPlan, ModelNeeds};
use ember_core::device::{Model, Settings};
use ember_core::flash::{FlashOutcome, Slot};
use ember_core::image::ImageHeader;
use ember_core::protocol::{self, ErrorCode, Event, Hello, MAX_FRAME, PROTOCOL_VERSION};
use ember_core::sampler::{SamplingConfig, SamplingError};
use ember_engine::{ChatFormat, ChatSession};
use ember_flash::{FlashError, SlotDir};
use ember_image::Image;
use ember_tokenizer::Tokenizer;
use ember_tract::{CpuReport, TractModel};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Why an image cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A GGUF file where an Ember image belongs.
    #[error(
        "{} is a GGUF file; emberd serves Ember images (make one with `ember quantize`)",
        .0.display()
    )]
    Gguf(PathBuf),
    /// The image cannot be opened or its contents used.
    #[error("cannot load model {}", path.display())]
    Load {
        /// The image.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The image does not fit the board's memory budget.
    #[error("{} does not fit {board}", path.display())]
    DoesNotFit {
        /// The image.
        path: PathBuf,
        /// The board's name.
        board: String,
        /// By how much.
        source: Box<ember_board::NoFit>,
    },
    /// The self-test gave other tokens than the image records.
    #[error("self-test failed: {prompt:?} continued as {got:?}, the image expects {expected:?}")]
    SelfTest {
        /// The self-test's prompt.
        prompt: String,
        /// What this device generated.
        got: String,
        /// What the image records.
        expected: String,
    },
    /// The slot directory cannot be used.
    #[error("cannot use the slot directory {}", dir.display())]
    SlotDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: FlashError,
    },
    /// The slot directory failed.
    #[error(transparent)]
    Flash(#[from] FlashError),
    /// A flashed image waits for its trial, but the device serves a fixed image.
    #[error("a trial boot without slots")]
    NoSlots,
    /// The default settings are out of range.
    #[error("invalid sampling settings")]
    Settings(#[source] SamplingError),
}

/// What a device serves: the active slot of a slot directory (it can then be flashed), or a
/// fixed image.
pub enum Source {
    /// A slot directory.
    Slots(Box<SlotDir>),
    /// An image file.
    Image(PathBuf),
}

impl Source {
    /// The slot directory `slot_dir` (or, with neither it nor `model`, the board's), else the
    /// image `model`; `None` when there is neither a board nor either path.
    pub fn choose(
        board: Option<&Board>,
        slot_dir: Option<&Path>,
        model: Option<&Path>,
    ) -> Result<Option<Source>, BootError> {
        let dir = match (slot_dir, model, board) {
            (Some(dir), _, _) => dir,
            (None, Some(model), _) => return Ok(Some(Source::Image(model.to_owned()))),
            (None, None, Some(board)) => &board.slot_dir,
            (None, None, None) => return Ok(None),
        };
        // An image must at least fit the budget beside the runtime; the trial boot checks the rest.
        let max_image = board.map(|b| b.budget_bytes().saturating_sub(ember_board::RUNTIME_BYTES));
        let slots = SlotDir::open(dir, max_image).map_err(|source| BootError::SlotDir {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(Some(Source::Slots(Box::new(slots))))
    }

    /// The image to serve now.
    pub fn path(&self) -> PathBuf {
        match self {
            Source::Slots(slots) => slots.active_path(),
            Source::Image(path) => path.clone(),
        }
    }

    /// The slots, if the device can be flashed.
    pub fn slot_dir(&self) -> Option<&SlotDir> {
        match self {
            Source::Slots(slots) => Some(slots),
            Source::Image(_) => None,
        }
    }

    /// The slots, to flash them.
    pub fn slots(&mut self) -> Option<&mut SlotDir> {
        match self {
            Source::Slots(slots) => Some(slots),
            Source::Image(_) => None,
        }
    }
}

/// How replies go unless a request says otherwise.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Sampling temperature.
    pub temperature: f32,
    /// Seed of the sampler.
    pub seed: u64,
    /// Most tokens per reply.
    pub max_tokens: u32,
    /// The system prompt (`None`: the model's).
    pub system: Option<String>,
}

/// Where images are booted: the board (if any), the context asked for, the engine's threads.
#[derive(Debug, Clone, Copy)]
pub struct Boot<'a> {
    /// The board profile, whose memory budget limits the context.
    pub board: Option<&'a Board>,
    /// Context positions asked for (default: the model's, or the longest that fits the board).
    pub context: Option<usize>,
    /// Worker threads of the engine.
    pub threads: usize,
}

/// An image opened and fitted to the board.
pub struct Opened {
    /// The image, mapped.
    pub image: Image,
    /// Its memory plan on the board, if there is a board.
    pub plan: Option<MemoryPlan>,
    /// Context positions the KV cache holds.
    pub capacity: usize,
    path: PathBuf,
}

/// What the image (its architecture checked) needs from a board's memory: the mapped file and
/// the int8 engine's KV cache.
pub fn model_needs(image: &Image) -> ModelNeeds {
    let architecture = image.manifest().architecture;
    let cache = ember_tract::CacheNeeds::of(&architecture);
    ModelNeeds {
        image_bytes: image.file_size(),
        cache_bytes_per_position: cache.bytes_per_position,
        windowed_cache_bytes_per_position: cache.windowed_bytes_per_position,
        window_positions: cache.window_positions,
        context_length: architecture.context_length,
    }
}

impl Boot<'_> {
    /// Opens the image at `path` and plans its memory on the board.
    pub fn open(&self, path: &Path) -> Result<Opened, BootError> {
        let image = match Image::open(path) {
            Ok(image) => image,
            Err(_) if is_gguf(path) => return Err(BootError::Gguf(path.to_owned())),
            Err(e) => return Err(load_error(path, e)),
        };
        let config = image.manifest().architecture;
        config.check().map_err(|e| load_error(path, e))?;
        let plan = match self.board {
            Some(board) => {
                let plan = board
                    .plan_memory(&model_needs(&image), self.context)
                    .map_err(|source| BootError::DoesNotFit {
                        path: path.to_owned(),
                        board: board.name.clone(),
                        source: Box::new(source),
                    })?;
                log::info!("board {}: {plan}", board.name);
                Some(plan)
            }
            None => None,
        };
        let capacity = match plan {
            Some(plan) => plan.context,
            None => self
                .context
                .unwrap_or(config.context_length)
                .min(config.context_length),
        };
        Ok(Opened {
            image,
            plan,
            capacity,
            path: path.to_owned(),
        })
    }

    /// Serves the image `source` holds and, after each flash, gives the new image its trial and
    /// serves whichever slot is then active. `serve` gets a conversation with the model, the
    /// line's view of it, news of the last flash (to send first, if any) and the slots, and
    /// returns the slot a flashed image waits in; its error, or one booting, ends serving.
    pub fn run<E: From<BootError>>(
        &self,
        source: &mut Source,
        defaults: &Defaults,
        started: Instant,
        mut serve: impl FnMut(
            &mut ChatSession<'_>,
            Model,
            Option<Event>,
            Option<&mut SlotDir>,
        ) -> Result<Slot, E>,
    ) -> E {
        let mut notice = None;
        loop {
            let mut boot = || -> Result<(), E> {
                let opened = self.open(&source.path())?;
                let model = Model {
                    hello: opened.hello(source)?,
                    settings: opened.settings(
                        defaults.temperature,
                        defaults.seed,
                        defaults.max_tokens,
                    ),
                    system: defaults.system.clone(),
                };
                model
                    .settings
                    .sampling
                    .validate()
                    .map_err(BootError::Settings)?;
                let system = defaults.system.clone();
                let slot = self.chat(&opened, system, started, |chat| {
                    serve(chat, model, notice.take(), source.slots())
                })??;
                let slots = source.slots().ok_or(BootError::NoSlots)?;
                notice = Some(self.trial(slots, slot)?);
                Ok(())
            };
            if let Err(e) = boot() {
                return e;
            }
        }
    }

    /// Loads `opened` into the int8 engine and hands a conversation with it to `serve`, with a
    /// KV cache of the opened capacity and `system` as the system prompt. `started` is when the
    /// device started (for the log).
    pub fn chat<T>(
        &self,
        opened: &Opened,
        system: Option<String>,
        started: Instant,
        serve: impl FnOnce(&mut ChatSession<'_>) -> T,
    ) -> Result<T, BootError> {
        let engine = TractModel::load(&opened.image, self.threads).map_err(|e| opened.error(e))?;
        let tokenizer = opened.tokenizer()?;
        let format = opened.format(&tokenizer)?;
        ember_engine::memory::release_free_heap();
        let mut session = engine
            .session(opened.capacity)
            .map_err(|e| opened.error(e))?;
        log::info!(
            "serving {} ({} threads, {} kernel, context {}) after {:.2} s",
            opened.image.manifest().model_name,
            self.threads,
            engine.kernel().name(),
            opened.capacity,
            started.elapsed().as_secs_f64()
        );
        Ok(serve(&mut ChatSession::new(
            &mut session,
            &tokenizer,
            format,
            system,
        )))
    }

    /// Boots the image in `slot` on trial: it must fit the board and pass its self-test to
    /// become active; otherwise the device goes back to the active slot. Returns what to tell
    /// the host.
    pub fn trial(&self, slots: &mut SlotDir, slot: Slot) -> Result<Event, BootError> {
        let started = Instant::now();
        match self.self_test(&slots.path(slot)) {
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
                let mut detail = format!("slot {} stays active: {e}", slots.table().active);
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    let _ = write!(detail, ": {cause}");
                    source = cause.source();
                }
                log::warn!("flash: slot {slot} failed its trial: {detail}");
                Ok(Event::Error {
                    code: ErrorCode::SelfTestFailed,
                    detail: protocol::truncated(&detail),
                    // The device names the commit this answers.
                    request: None,
                })
            }
        }
    }

    /// Opens the image at `path`, fits it to the board, runs its self-test; returns its
    /// manifest's hash.
    fn self_test(&self, path: &Path) -> Result<[u8; 32], BootError> {
        let opened = self.open(path)?;
        let image = &opened.image;
        let tokenizer = opened.tokenizer()?;
        let tokens = ember_tract::self_test(image, &tokenizer, self.threads)
            .map_err(|e| load_error(path, e))?;
        let expected = &image.manifest().self_test;
        if tokens != expected.tokens {
            return Err(BootError::SelfTest {
                prompt: expected.prompt.clone(),
                got: tokenizer.decode(&tokens),
                expected: tokenizer.decode(&expected.tokens),
            });
        }
        opened.hash()
    }

    /// What the device would run from `source`: model, board, slots, context, memory, threads
    /// and kernels, one per line; `baud` is the line's rate if not the board's.
    pub fn report(&self, source: &Source, baud: Option<u32>) -> Result<String, BootError> {
        let (path, slots) = (source.path(), source.slot_dir());
        let opened = self.open(&path)?;
        let cpu = CpuReport::detect();
        let name = &opened.image.manifest().model_name;
        let mut out = format!("model    {} ({name})\n", path.display());
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        match self.board {
            Some(b) => {
                line(format!(
                    "board    {} — {} ({})",
                    b.name, b.description, b.target
                ));
                line(format!(
                    "serial   {} at {} baud",
                    b.serial,
                    baud.unwrap_or(b.baud)
                ));
            }
            None => line("board    none (no memory budget)".into()),
        }
        line(match slots {
            Some(slots) => format!(
                "slots    {}: slot {} active, {}",
                slots.dir().display(),
                slots.table().active,
                if slots.requires_signature() {
                    "signed images only"
                } else {
                    "unsigned images accepted"
                }
            ),
            None => "slots    none (a fixed --model cannot be flashed)".into(),
        });
        line(format!("context  {} positions", opened.capacity));
        if let Some(plan) = opened.plan {
            line(format!("memory   {plan}"));
        }
        line(format!("threads  {}", self.threads));
        line(format!("int8     {}", cpu.int8.name()));
        line(format!("tract    {}", cpu.tract_isa));
        if let Some(kind) = &cpu.tract_cpu {
            line(format!("tuned    {kind}"));
        }
        Ok(out)
    }
}

impl Opened {
    /// The image's tokenizer.
    pub fn tokenizer(&self) -> Result<Tokenizer, BootError> {
        let data = self.image.tokenizer_data().map_err(|e| self.error(e))?;
        Tokenizer::from_image(&self.image.manifest().tokenizer, &data).map_err(|e| self.error(e))
    }

    /// How the image's conversations become tokens: its chat template (plain text if it has
    /// none) and its tokenizer's special tokens.
    pub fn format(&self, tokenizer: &Tokenizer) -> Result<ChatFormat, BootError> {
        let manifest = self.image.manifest();
        ChatFormat::new(
            manifest.chat_template.as_deref(),
            tokenizer,
            manifest.tokenizer.add_bos,
        )
        .map_err(|e| self.error(e))
    }

    /// SHA-256 of the image's manifest (which holds every section's).
    pub fn hash(&self) -> Result<[u8; 32], BootError> {
        let header = ImageHeader::parse(&self.image.mapping()[..]).map_err(|e| self.error(e))?;
        Ok(header.manifest_sha256)
    }

    /// The greeting for programs of a device serving from `source`.
    pub fn hello(&self, source: &Source) -> Result<Hello, BootError> {
        let slots = source.slot_dir();
        Ok(Hello {
            protocol_version: PROTOCOL_VERSION,
            model_name: protocol::truncated(&self.image.manifest().model_name),
            model_hash: self.hash()?,
            context_length: self.capacity as u32,
            max_frame: MAX_FRAME as u32,
            slot: slots.map(|s| s.table().active),
            last_flash: slots.and_then(|s| s.table().last),
            max_baud: 0,
        })
    }

    /// Reply settings: the image's sampling defaults with this `temperature`, `seed` and
    /// `max_tokens`.
    pub fn settings(&self, temperature: f32, seed: u64, max_tokens: u32) -> Settings {
        let defaults = self.image.manifest().default_sampling;
        Settings {
            sampling: SamplingConfig {
                temperature,
                top_k: defaults.top_k,
                top_p: defaults.top_p,
                repetition_penalty: defaults.repetition_penalty,
                seed,
                ..SamplingConfig::default()
            },
            max_tokens,
            stops: Vec::new(),
        }
    }

    fn error(&self, e: impl std::error::Error + Send + Sync + 'static) -> BootError {
        load_error(&self.path, e)
    }
}

fn load_error(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> BootError {
    BootError::Load {
        path: path.to_owned(),
        source: Box::new(e),
    }
}

/// Whether the file at `path` starts with GGUF's magic bytes.
fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut magic))
        .is_ok_and(|()| &magic == b"GGUF")
}
