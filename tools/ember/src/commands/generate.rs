//! `ember generate`: text from a prompt, streamed to stdout.

use super::SamplingArgs;
use anyhow::{Result, bail};
use ember_engine::{ChatFormat, GenerateOptions, generate};
use ember_template::{Message, Role};
use ember_tools::model::LoadedModel;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Generate text from a prompt, streaming it to stdout.
///
/// An Ember image runs on the int8 engine (tract); a GGUF file on the f32 reference. Without
/// --model: the default model (SmolLM2-135M-Instruct, fetched and quantized on first use).
#[derive(clap::Args)]
pub struct Args {
    #[arg(short, long, help = super::MODEL_HELP)]
    model: Option<PathBuf>,
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

/// Runs `ember generate`.
pub fn run(args: Args) -> Result<()> {
    let sampling = args.sampling.config()?;
    let threads = super::use_threads(args.threads)?;
    let path = super::model_or_default(args.model.as_deref(), threads)?;

    let load_start = Instant::now();
    let model = LoadedModel::open(&path, threads)?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let (file, tokenizer) = (&model.file, &model.tokenizer);

    let format = ChatFormat::new(file.chat_template(), tokenizer, file.add_bos())?;
    let prompt = if args.chat {
        if file.chat_template().is_none() {
            bail!(
                "{} has no chat template (a base model, not a chat one): --chat is \
                 unavailable; give the text to continue without --chat",
                path.display()
            );
        }
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new(Role::System, system));
        }
        messages.push(Message::new(Role::User, &args.prompt));
        format.encode(tokenizer, &format.render(&messages)?)?
    } else {
        format.encode(tokenizer, &args.prompt)?
    };

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
    drop(stdout);
    if args.json {
        return super::emit(&serde_json::to_value(&result)?, true);
    }
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
    Ok(())
}
