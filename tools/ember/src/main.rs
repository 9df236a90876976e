//! `ember`, Ember's host tool: a thin dispatcher over one module per command (`commands/`).
//!
//! Every command prints its result on stdout (human text, or one JSON object per result with
//! `--json`) and its progress, prompts and warnings on stderr. A closed stdout (`ember … | head`)
//! ends the process quietly, as it ends `ls`.

mod commands;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use commands::{
    ask, bench, chat, completions, export_onnx, fetch, flash, generate, inspect, keygen, line,
    package, quantize, serve, sign, synth,
};
use std::process::ExitCode;

/// Ember: a chat language model on a small board, driven over a serial line.
///
/// This is the host tool: it fetches models and turns them into Ember images, runs them here,
/// and talks to devices running `emberd` over a serial line: chat, ask, benchmark, package for a
/// board, flash. Without --model, `chat`, `generate` and `bench` run the default model
/// (SmolLM2-135M-Instruct), fetched and quantized into $EMBER_HOME on first use.
#[derive(Parser)]
#[command(name = "ember", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Fetch(fetch::Args),
    Quantize(quantize::Args),
    Inspect(inspect::Args),
    ExportOnnx(export_onnx::Args),
    Synth(synth::Args),
    Chat(chat::Args),
    Generate(generate::Args),
    Bench(bench::Args),
    Ask(ask::Args),
    Flash(flash::Args),
    Keygen(keygen::Args),
    Sign(sign::Args),
    Package(package::Args),
    Line(line::Args),
    Serve(serve::Args),
    Completions(completions::Args),
}

/// The commands as `ember --help` lists them, by what they work on: (command and flags, the
/// line shown; `None` shows the command's own summary).
const GROUPS: commands::Groups = &[
    (
        "Models",
        &[
            ("fetch", None),
            ("quantize", None),
            ("inspect", None),
            ("export-onnx", None),
            ("synth", None),
        ],
    ),
    (
        "Run a model here",
        &[("chat", None), ("generate", None), ("bench", None)],
    ),
    (
        "Devices running emberd, over a serial line",
        &[
            ("ask", None),
            (
                "chat --port",
                Some("Chat with a device: the same conversation, run there"),
            ),
            (
                "bench --port",
                Some("Measure a device as a voice kiosk sees it"),
            ),
            ("flash", None),
            ("keygen", None),
            ("sign", None),
            ("package", None),
            ("line", None),
        ],
    ),
    (
        "Other tools' protocols (OpenAI API, Wyoming)",
        &[("serve", None)],
    ),
    ("Shell", &[("completions", None)]),
];

/// `ember`'s clap command, with the commands listed by group in its help.
fn cli() -> clap::Command {
    let command = Cli::command();
    let listing = commands::grouped_listing(&command, GROUPS);
    command.help_template(format!(
        "{{before-help}}{{about-with-newline}}\n{{usage-heading}} {{usage}}\n\n{listing}\
         Options:\n{{options}}{{after-help}}"
    ))
}

fn main() -> ExitCode {
    commands::exit_quietly_on_closed_stdout();
    let matches = cli().get_matches();
    let parsed = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match parsed.command {
        Command::Fetch(args) => fetch::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::ExportOnnx(args) => export_onnx::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Ask(args) => ask::run(args),
        Command::Flash(args) => flash::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Sign(args) => sign::run(args),
        Command::Package(args) => package::run(args),
        Command::Line(args) => line::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Completions(args) => completions::run(args, cli()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_listed_in_a_group() {
        let command = Cli::command();
        let listed = |name: &str| {
            GROUPS
                .iter()
                .flat_map(|(_, entries)| entries.iter())
                .any(|(entry, _)| entry.split(' ').next() == Some(name))
        };
        for sub in command.get_subcommands() {
            let name = sub.get_name();
            assert!(
                listed(name),
                "`ember {name}` is in no group of `ember --help`"
            );
        }
        for (_, entries) in GROUPS {
            for (entry, _) in *entries {
                let name = entry.split(' ').next().unwrap_or_default();
                assert!(
                    command.find_subcommand(name).is_some(),
                    "group lists unknown command {entry}"
                );
            }
        }
        cli().debug_assert();
    }
}
