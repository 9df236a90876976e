//! `ember serve`: the OpenAI chat API and a Wyoming handle service in front of a model run here
//! or a device on a serial line.

use super::{model_or_default, use_threads};
use anyhow::{Context, Result, bail};
use ember_boot::Defaults;
use ember_serve::backend::{Backend, LocalDevice};
use ember_serve::{Frontends, wyoming};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Serve the OpenAI chat API and a Wyoming handle service (Home Assistant).
///
/// In front of one model: an Ember image run here (--model; default SmolLM2-135M-Instruct) or a
/// device running `emberd` on a serial line (--port). Give --http, --wyoming or both; each
/// bound address is printed on stdout (port 0 picks a free port). The device holds one
/// conversation: a request whose messages extend it sends only the new message, any other
/// first replays its earlier messages. Replies run one at a time; --queue more wait, and a
/// request beyond them gets 503 (HTTP, with Retry-After) or `not-handled` (Wyoming).
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
ember serve --http 127.0.0.1:8080                       (the default model, here)\n  \
ember serve --model smollm2.ember --http 127.0.0.1:8080 --wyoming tcp://0.0.0.0:10400\n  \
ember serve --port /dev/ttyUSB0 --http 127.0.0.1:8080   (a board running emberd)\n  \
curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n    \
-d '{\"model\":\"ember\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi!\"}]}'")]
pub struct Args {
    /// OpenAI-compatible HTTP API on ADDR:PORT (or PORT, on 127.0.0.1): /v1/models,
    /// /v1/chat/completions.
    #[arg(long, value_name = "ADDR:PORT", value_parser = http_address)]
    http: Option<SocketAddr>,
    /// Wyoming handle service on tcp://ADDR:PORT (or PORT, on 127.0.0.1), for Home Assistant.
    #[arg(long, value_name = "tcp://ADDR:PORT", value_parser = wyoming_address)]
    wyoming: Option<SocketAddr>,
    /// Require `Authorization: Bearer KEY` on every HTTP request.
    #[arg(long, env = "EMBER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The Ember image to run here (from `ember quantize`). Default: SmolLM2-135M-Instruct,
    /// fetched and quantized into $EMBER_HOME on first use.
    #[arg(long, conflicts_with = "port")]
    model: Option<PathBuf>,
    /// Serial port of a device running `emberd` (instead of --model).
    #[arg(long)]
    port: Option<PathBuf>,
    /// Baud rate of --port.
    #[arg(long, default_value_t = 115_200, requires = "port")]
    baud: u32,
    /// Replies that may wait while one runs; more get the busy answer.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=1000))]
    queue: u32,
    /// Languages the model speaks, for Wyoming's `info` (repeatable).
    #[arg(long = "language", value_name = "CODE", default_value = "en")]
    languages: Vec<String>,
    /// With --model: worker threads (default: all cores).
    #[arg(long, conflicts_with = "port")]
    threads: Option<usize>,
    /// With --model: context positions (default: the model's).
    #[arg(long, conflicts_with = "port")]
    context: Option<usize>,
    /// With --model: the system prompt of requests without one (default: the model's).
    #[arg(long, conflicts_with = "port")]
    system: Option<String>,
    /// With --model: most tokens per reply unless a request says.
    #[arg(long, default_value_t = 256, conflicts_with = "port",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// With --model: sampling temperature unless a request says (0: greedy).
    #[arg(long, default_value_t = 0.0, conflicts_with = "port")]
    temperature: f32,
    /// With --model: seed of the sampler unless a request says.
    #[arg(long, default_value_t = 0, conflicts_with = "port")]
    seed: u64,
}

/// `ADDR:PORT`, or `PORT` on the loopback address.
fn http_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is not ADDR:PORT (e.g. 127.0.0.1:8080) or a port"))
}

/// `tcp://ADDR:PORT`, `ADDR:PORT` or `PORT`.
fn wyoming_address(text: &str) -> Result<SocketAddr, String> {
    http_address(text.strip_prefix("tcp://").unwrap_or(text))
        .map_err(|_| format!("{text:?} is not tcp://ADDR:PORT (e.g. tcp://0.0.0.0:10400)"))
}

/// Runs `ember serve`.
pub fn run(args: Args) -> Result<()> {
    if args.http.is_none() && args.wyoming.is_none() {
        bail!("give --http ADDR:PORT, --wyoming tcp://ADDR:PORT or both");
    }
    env_logger::Builder::new()
        .parse_env(env_logger::Env::new().filter_or("EMBER_LOG", "info"))
        .format(|out, r| writeln!(out, "ember serve: {}", r.args()))
        .init();
    let queue = args.queue as usize;
    let backend = match &args.port {
        Some(port) => Backend::device(port, args.baud, queue)
            .with_context(|| format!("cannot reach the device on {}", port.display()))?,
        None => {
            let threads = use_threads(args.threads)?;
            let image = model_or_default(args.model.as_deref(), threads)?;
            let local = LocalDevice {
                image,
                threads,
                context: args.context,
                defaults: Defaults {
                    temperature: args.temperature,
                    seed: args.seed,
                    max_tokens: args.max_tokens,
                    system: args.system.clone(),
                },
            };
            Backend::local(local, queue)?
        }
    };
    let info = backend.info();
    eprintln!(
        "serving {} ({}, context {})",
        info.model_name, info.location, info.context_length
    );
    let frontends = Frontends {
        http: args.http,
        wyoming: args.wyoming,
        api_key: args.api_key,
        program: wyoming::Program {
            languages: args.languages,
        },
    };
    ember_serve::serve(backend, frontends, &mut |url| {
        println!("{url}");
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
