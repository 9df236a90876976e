//! `ember chat`: a conversation in the terminal, with a model run here or with a device.

use super::{DeviceArgs, SamplingArgs};
use anyhow::{Context, Result, bail};
use ember_core::protocol::ChatOptions;
use ember_engine::{ChatFormat, ChatSession, FinishReason, GenerateOptions, Progress};
use ember_serial::{Client, Recovery};
use ember_tools::{model::LoadedModel, remote};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Chat in the terminal, one line per message; the reply streams back.
///
/// Without --model or --port the default model runs here (SmolLM2-135M-Instruct, fetched and
/// quantized into $EMBER_HOME on first use). With --port the conversation runs on a device
/// running `emberd` on that serial line (frame mode; Ctrl-C stops a reply). The KV cache is
/// kept across turns, so each turn prefills only its own tokens; when the context is full the
/// oldest turns are dropped. Ctrl-C stops a reply; type /reset to start over, /quit (or Ctrl-D)
/// to leave.
#[derive(clap::Args)]
pub struct Args {
    #[arg(short, long, conflicts_with = "port", help = super::MODEL_HELP)]
    model: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// End replies before this text (repeatable; --port only).
    #[arg(long, requires = "port")]
    stop: Vec<String>,
    /// Milliseconds a reply may stay silent before asking the device what became of the
    /// message (one it never got is sent again; --port only).
    #[arg(long, default_value_t = 10_000, requires = "port")]
    silence_ms: u64,
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

/// One side of the conversation: a model here or a device.
trait Partner {
    /// Answers `text`, streaming the reply to `on_text`; returns the reply's JSON record and a
    /// one-line summary for people.
    fn say(&mut self, text: &str, on_text: &mut dyn FnMut(&str)) -> Result<(String, String)>;
    /// Starts over.
    fn reset(&mut self) -> Result<()>;
}

/// Runs `ember chat`.
pub fn run(args: Args) -> Result<()> {
    let sampling = args.sampling.config()?;
    if let Some(port) = &args.device.port {
        let options = ChatOptions {
            max_tokens: Some(u32::try_from(args.max_tokens).unwrap_or(u32::MAX)),
            temperature: Some(sampling.temperature),
            top_k: Some(sampling.top_k),
            top_p: Some(sampling.top_p),
            repeat_penalty: Some(sampling.repetition_penalty),
            seed: Some(sampling.seed),
            stop: remote::stops(&args.stop)?,
            sentences: false,
        };
        let mut client = remote::connect(port, args.device.baud, false)?;
        if let Some(system) = &args.system {
            remote::set_system(&mut client, system)?;
        }
        let mut device = Device {
            client,
            session: remote::new_session(),
            options,
            recovery: Recovery {
                silence: Duration::from_millis(args.silence_ms),
                ..Recovery::default()
            },
            interrupt: remote::interrupt_flag()?,
        };
        converse(&mut device, args.json)?;
        device.client.goodbye(Duration::from_secs(5))?;
        return Ok(());
    }
    let threads = super::use_threads(args.threads)?;
    let path = super::model_or_default(args.model.as_deref(), threads)?;
    let model = LoadedModel::open(&path, threads)?;
    if model.file.chat_template().is_none() {
        bail!(
            "{} has no chat template (a base model, not a chat one): ember chat is unavailable; \
             give it text to continue with `ember generate`",
            path.display()
        );
    }
    let format = ChatFormat::new(
        model.file.chat_template(),
        &model.tokenizer,
        model.file.add_bos(),
    )?;
    let context = args.context.unwrap_or(model.architecture().context_length);
    let mut session = model.session(context)?;
    let mut local = Local {
        chat: ChatSession::new(
            session.as_mut(),
            &model.tokenizer,
            format,
            args.system.clone(),
        ),
        options: GenerateOptions {
            max_tokens: args.max_tokens,
            sampling,
        },
        interrupt: remote::interrupt_flag()?,
    };
    converse(&mut local, args.json)
}

/// The conversation loop: a line from stdin, the reply to stdout, until /quit or the end of input.
fn converse(partner: &mut dyn Partner, json: bool) -> Result<()> {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "ember chat: type a message; Ctrl-C stops a reply, /reset starts over, /quit or \
             Ctrl-D leaves."
        );
    }
    let mut lines = std::io::stdin().lock().lines();
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
                partner.reset()?;
                eprintln!("(conversation reset)");
                continue;
            }
            "/help" => {
                eprintln!("/reset starts a new conversation, /quit leaves; Ctrl-C stops a reply");
                continue;
            }
            _ => {}
        }
        let mut stdout = std::io::stdout().lock();
        let (record, summary) = partner.say(&line, &mut |text| {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        })?;
        writeln!(stdout)?;
        if json {
            writeln!(stdout, "{record}")?;
        } else if interactive {
            eprintln!("[{summary}]");
        }
    }
    Ok(())
}

/// The model, run here.
struct Local<'a> {
    chat: ChatSession<'a>,
    options: GenerateOptions,
    /// Set by Ctrl-C: the reply stops at its next token, or after the slice of its prompt under way.
    interrupt: Arc<AtomicBool>,
}

impl Partner for Local<'_> {
    fn say(&mut self, text: &str, on_text: &mut dyn FnMut(&str)) -> Result<(String, String)> {
        self.interrupt.store(false, Ordering::SeqCst);
        // Ctrl-C is seen between slices of the prompt's prefill and between tokens.
        let reply = self.chat.say(text, &self.options, &mut |progress| {
            if let Progress::Text(piece) = progress {
                on_text(piece);
            }
            if self.interrupt.load(Ordering::SeqCst) {
                std::ops::ControlFlow::Break(FinishReason::Cancelled)
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })?;
        let s = &reply.stats;
        let summary = format!(
            "{} new prompt tokens, {} generated, {:.1} tok/s",
            s.prompt_tokens, s.generated_tokens, s.decode_tokens_per_second
        );
        Ok((serde_json::to_string(&reply)?, summary))
    }

    fn reset(&mut self) -> Result<()> {
        self.chat.reset();
        Ok(())
    }
}

/// A device running `emberd`, in frame mode.
struct Device {
    client: Client,
    session: u32,
    options: ChatOptions,
    recovery: Recovery,
    interrupt: Arc<AtomicBool>,
}

impl Partner for Device {
    fn say(&mut self, text: &str, on_text: &mut dyn FnMut(&str)) -> Result<(String, String)> {
        self.interrupt.store(false, Ordering::SeqCst);
        let request = remote::chat_request(self.session, text, self.options.clone())?;
        let reply = remote::converse(
            &mut self.client,
            &request,
            self.recovery,
            Some(&self.interrupt),
            on_text,
        )?;
        for error in &reply.errors {
            eprintln!("{error}");
        }
        for warning in &reply.warnings {
            eprintln!("warning: {warning}");
        }
        let s = &reply.stats;
        let summary = format!(
            "{}: {} prompt tokens, {} generated, first token {} ms, {:.1} tok/s",
            reply.finish,
            s.prompt_tokens,
            s.generated_tokens,
            s.time_to_first_token_ms,
            s.decode_tokens_per_second
        );
        Ok((serde_json::to_string(&reply)?, summary))
    }

    fn reset(&mut self) -> Result<()> {
        remote::reset(&mut self.client)
    }
}
