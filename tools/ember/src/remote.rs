//! Talking to an Ember device over a serial line in frame mode: `ember chat --port`,
//! `ember ask --port`, `ember bench --port`.

use anyhow::{Context, Result, bail};
use ember_core::protocol::{self, ChatOptions, ChatRequest, Event, ReplyStats, Request};
use ember_serial::{Client, ClientError, Recovery, describe_error};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long to wait for the device's greeting (per attempt).
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the device may stay silent during a reply before we give up (`ember bench`).
const SILENCE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for the answer to a request the device answers at once (`Reset`,
/// `SetSystem`) before sending it again (it may have been lost on the line).
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Opens `port` and says hello; reports the device on stderr unless `quiet`.
pub fn connect(port: &Path, baud: u32, quiet: bool) -> Result<Client> {
    let client = Client::connect(port, baud, HELLO_TIMEOUT)?;
    if !quiet {
        let hello = client.hello();
        eprintln!(
            "connected to {} on {} (protocol {}, context {}, model {})",
            hello.model_name,
            port.display(),
            hello.protocol_version,
            hello.context_length,
            hex(&hello.model_hash[..8])
        );
    }
    Ok(client)
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A session number for a new conversation.
pub fn new_session() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos());
    (nanos ^ std::process::id()).max(1)
}

/// Builds a chat request; `text` longer than the protocol allows is an error.
pub fn chat_request(session: u32, text: &str, options: ChatOptions) -> Result<Request> {
    if text.len() > protocol::MAX_TEXT {
        bail!(
            "message of {} bytes is longer than the {} the protocol carries",
            text.len(),
            protocol::MAX_TEXT
        );
    }
    Ok(Request::Chat(ChatRequest {
        session,
        text: protocol::truncated(text),
        options,
    }))
}

/// Stop sequences for a request.
pub fn stops(
    stops: &[String],
) -> Result<
    heapless::Vec<protocol::BoundedText<{ protocol::MAX_STOP_BYTES }>, { protocol::MAX_STOPS }>,
> {
    let mut out = heapless::Vec::new();
    for stop in stops {
        if stop.is_empty() || stop.len() > protocol::MAX_STOP_BYTES {
            bail!(
                "stop sequence {stop:?} must be 1 to {} bytes",
                protocol::MAX_STOP_BYTES
            );
        }
        out.push(protocol::truncated(stop))
            .map_err(|_| anyhow::anyhow!("at most {} stop sequences", protocol::MAX_STOPS))?;
    }
    Ok(out)
}

/// One reply as received.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// The reply's text.
    pub text: String,
    /// Its sentences, when asked for.
    pub sentences: Vec<String>,
    /// Why it ended (`eos`, `stop`, `length`, `cancelled`, `error`; `lost`: the device finished
    /// the reply but its end was lost on the line).
    pub finish: &'static str,
    /// Errors the device reported.
    pub errors: Vec<String>,
    /// What the line lost and the host recovered or could not (for people; also on stderr).
    pub warnings: Vec<String>,
    /// Times the message was sent again (the device had not received it).
    pub resent: u32,
    /// The device's counts and timings.
    pub stats: ReplyStats,
}

/// Sends `request` (a chat) and collects the reply, streaming its text to `on_text`. When
/// `interrupt` becomes true the reply is cancelled (once) and the cancel acknowledged.
///
/// A chat or an end lost on the line is recovered by [`Client::chat`]'s rule (a chat is sent
/// again only when the device has certainly not run it, see [`Recovery`]); a reply with frames
/// missing, or whose end was lost, is returned as it arrived, with a warning in
/// [`Received::warnings`].
pub fn converse(
    client: &mut Client,
    request: &Request,
    recovery: Recovery,
    interrupt: Option<&AtomicBool>,
    on_text: &mut dyn FnMut(&str),
) -> Result<Received> {
    let mut received = Received {
        text: String::new(),
        sentences: Vec::new(),
        finish: "",
        errors: Vec::new(),
        warnings: Vec::new(),
        resent: 0,
        stats: ReplyStats::default(),
    };
    let mut cancelled = false;
    let mut cancel = || {
        let asked = interrupt.is_some_and(|flag| flag.swap(false, Ordering::SeqCst));
        cancelled |= asked;
        asked
    };
    let outcome = client.chat(request, recovery, &mut cancel, &mut |event| match event {
        Event::Token { text } => {
            on_text(text);
            received.text.push_str(text);
        }
        Event::SynthesizeChunk { text } => received.sentences.push(text.to_string()),
        Event::Error { code, detail, .. } => received.errors.push(describe_error(*code, detail)),
        _ => {}
    })?;
    if cancelled {
        // The acknowledgement follows the end of the reply (it may be lost on a noisy line).
        let _ = client.until(
            Duration::from_secs(1),
            |e| matches!(e, Event::CancelAck { .. }),
            &mut |_| {},
        );
    }
    received.resent = outcome.resent;
    if outcome.resent > 0 {
        received.warnings.push(format!(
            "the message was lost on the line and sent again ({}×)",
            outcome.resent
        ));
    }
    if outcome.lost_frames > 0 {
        received.warnings.push(format!(
            "{} frame(s) of the reply were lost on the line: the reply may miss text",
            outcome.lost_frames
        ));
    }
    match outcome.end {
        Some((reason, stats)) => {
            received.finish = reason.as_str();
            received.stats = stats;
        }
        None => {
            received.finish = "lost";
            received.warnings.push(
                "the end of the reply was lost on the line (the device finished it): the reply may miss its end"
                    .to_string(),
            );
        }
    }
    Ok(received)
}

/// Options shared by chat and ask.
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    /// Per-request overrides.
    pub chat: ChatOptions,
    /// A system prompt to set first.
    pub system: Option<String>,
}

/// Sets the device's system prompt (the conversation starts over).
pub fn set_system(client: &mut Client, system: &str) -> Result<()> {
    if system.len() > protocol::MAX_TEXT {
        bail!("system prompt longer than {} bytes", protocol::MAX_TEXT);
    }
    let request = Request::SetSystem {
        text: protocol::truncated(system),
    };
    client.ask(&request, ANSWER_WAIT, |e| matches!(e, Event::Done))?;
    Ok(())
}

/// `ember ask --port`: one question; the reply's text goes to `on_text` as it streams. Ctrl-C
/// cancels the reply. Says goodbye to the device afterwards.
pub fn ask(
    port: &Path,
    baud: u32,
    question: &str,
    options: RemoteOptions,
    recovery: Recovery,
    quiet: bool,
    on_text: &mut dyn FnMut(&str),
) -> Result<Received> {
    let mut client = connect(port, baud, quiet)?;
    if let Some(system) = &options.system {
        set_system(&mut client, system)?;
    }
    let request = chat_request(new_session(), question, options.chat)?;
    let interrupt = interrupt_flag()?;
    let received = converse(&mut client, &request, recovery, Some(&interrupt), on_text)?;
    client.goodbye(Duration::from_secs(5))?;
    Ok(received)
}

/// A flag that Ctrl-C sets (instead of ending the process).
pub fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, flag.clone())
        .context("cannot catch Ctrl-C")?;
    Ok(flag)
}

/// Starts the device's conversation over (its history and cache).
pub fn reset(client: &mut Client) -> Result<()> {
    client.ask(&Request::Reset, ANSWER_WAIT, |e| matches!(e, Event::Done))?;
    Ok(())
}

/// What `ember bench --port` measures, per run and as medians.
#[derive(Debug, Clone, Serialize)]
pub struct SerialBench {
    /// The device's model.
    pub model: String,
    /// Runs measured.
    pub runs: usize,
    /// Milliseconds from sending the request to the first token event (median).
    pub time_to_first_token_ms: f64,
    /// Milliseconds from sending the request to the first sentence event (median).
    pub time_to_first_sentence_ms: f64,
    /// Milliseconds from sending cancel to its acknowledgement, mid-reply (median).
    pub cancel_ack_ms: f64,
    /// The slowest acknowledgement.
    pub cancel_ack_max_ms: f64,
    /// Tokens the device prefilled for the long prompt (its `End` statistics).
    pub long_prompt_tokens: u32,
    /// Milliseconds from sending cancel, during the long prompt's prefill, to its
    /// acknowledgement (median).
    pub prefill_cancel_ack_ms: f64,
    /// The slowest of those.
    pub prefill_cancel_ack_max_ms: f64,
    /// Token events per second as seen by the host, after the first (median).
    pub tokens_per_second: f64,
    /// Every run: (first token, first sentence, cancel ack, cancel ack during the prefill) in
    /// ms.
    pub samples: Vec<[f64; 4]>,
}

/// The first `bytes` bytes (at most; whole characters) of running text.
fn running_text(bytes: usize) -> String {
    let text = ember_models::quantize::QUALITY_TEXT.repeat(2);
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A system prompt and a message of about 1,000 bytes each (a frame carries 1,024) that make a
/// prompt of some 600 tokens for SmolLM2: running text, and numbers to add at the end of the message (a
/// digit is a token).
fn long_prompt() -> (String, String) {
    let mut message = running_text(700);
    message.push_str(" Then add up these numbers:");
    let mut number = 101;
    while message.len() + 4 <= 1000 {
        message.push_str(&format!(" {number}"));
        number += 1;
    }
    (running_text(1000), message)
}

/// Sends `message` (the long prompt's, with its system prompt set), cancels it `after` it was
/// sent — during its prefill — and returns the milliseconds from the cancel to its
/// acknowledgement, and the prompt's tokens.
fn cancel_during_prefill(
    client: &mut Client,
    message: &str,
    after: Duration,
) -> Result<(f64, u32)> {
    let request = chat_request(new_session(), message, ChatOptions::default())?;
    let start = Instant::now();
    client.send(&request)?;
    let mut cancel_sent = None;
    let mut ack = None;
    let mut end = None;
    let (sent, ack, stats) = loop {
        if let (Some(sent), Some(ack), Some(stats)) = (cancel_sent, ack, end) {
            break (sent, ack, stats);
        }
        if cancel_sent.is_none() && start.elapsed() >= after {
            client.send(&Request::Cancel)?;
            cancel_sent = Some(start.elapsed());
        }
        let Some(event) = next_event(client, start)? else {
            continue;
        };
        match event {
            Event::Token { .. } if cancel_sent.is_none() => bail!(
                "the long prompt's prefill ended before the cancel {after:?} after it was sent"
            ),
            Event::End { stats, .. } => end = Some(stats),
            Event::CancelAck { .. } => ack = Some(start.elapsed()),
            Event::Error { code, detail, .. } => bail!(describe_error(code, &detail)),
            _ => {}
        }
    };
    Ok(((ack - sent).as_secs_f64() * 1000.0, stats.prompt_tokens))
}

/// The next event, waiting 1 ms for it: `None` when none came, an error when none came and the
/// request was sent (at `start`) [`SILENCE_TIMEOUT`] ago or more.
fn next_event(client: &mut Client, start: Instant) -> Result<Option<Event>> {
    match client.recv(Duration::from_millis(1)) {
        Ok(event) => Ok(Some(event)),
        Err(ClientError::Timeout(_)) if start.elapsed() < SILENCE_TIMEOUT => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `ember bench --port`: time to first token, to first sentence, and cancel latency.
pub fn bench(
    port: &Path,
    baud: u32,
    runs: usize,
    prompt: &str,
    quiet: bool,
) -> Result<SerialBench> {
    let mut client = connect(port, baud, quiet)?;
    let model = client.hello().model_name.to_string();
    let mut samples = Vec::new();
    let mut rates = Vec::new();
    for run in 0..runs.max(1) {
        // A new session each run: every run prefills the same prompt from an empty cache.
        let options = ChatOptions {
            sentences: true,
            ..Default::default()
        };
        let request = chat_request(new_session(), prompt, options)?;
        let start = Instant::now();
        client.send(&request)?;
        let mut first_token = None;
        let mut first_sentence = None;
        let mut tokens = 0usize;
        let mut cancel_at = None;
        let mut cancel_sent = None;
        let mut ack = None;
        let mut ended = false;
        while !(ended && (ack.is_some() || cancel_sent.is_none())) {
            // Barge-in comes at any moment, not in step with the tokens: cancel a run-dependent
            // 0–45 ms after the first sentence.
            if cancel_sent.is_none() && !ended && cancel_at.is_some_and(|at| start.elapsed() >= at)
            {
                client.send(&Request::Cancel)?;
                cancel_sent = Some(start.elapsed());
            }
            let Some(event) = next_event(&mut client, start)? else {
                continue;
            };
            let now = start.elapsed();
            match event {
                Event::Token { .. } => {
                    tokens += 1;
                    first_token.get_or_insert(now);
                }
                Event::SynthesizeChunk { .. } if first_sentence.is_none() => {
                    first_sentence = Some(now);
                    cancel_at = Some(now + Duration::from_millis((run as u64 * 17) % 46));
                }
                Event::End { .. } => ended = true,
                Event::CancelAck { .. } => ack = Some(now),
                Event::Error { code, detail, .. } => bail!(describe_error(code, &detail)),
                _ => {}
            }
        }
        let (Some(first_token), Some(cancel_sent), Some(ack)) = (first_token, cancel_sent, ack)
        else {
            bail!("run {run}: the reply ended before a sentence was complete; try a longer prompt");
        };
        let first_sentence = first_sentence.unwrap_or(cancel_sent);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        samples.push([
            ms(first_token),
            ms(first_sentence),
            ms(ack - cancel_sent),
            0.0,
        ]);
        if tokens > 1 {
            rates.push((tokens - 1) as f64 / (cancel_sent - first_token).as_secs_f64());
        }
    }
    // A cancel during a long prompt's prefill, a run-dependent 10–70 ms after the request.
    let (system, message) = long_prompt();
    set_system(&mut client, &system)?;
    let mut long_prompt_tokens = 0;
    for (run, sample) in samples.iter_mut().enumerate() {
        let after = Duration::from_millis(10 + (run as u64 * 23) % 61);
        let (ack, tokens) = cancel_during_prefill(&mut client, &message, after)?;
        sample[3] = ack;
        long_prompt_tokens = tokens;
    }
    set_system(&mut client, "")?;
    client.goodbye(Duration::from_secs(5))?;
    let column = |i: usize| median(samples.iter().map(|s| s[i]).collect());
    let report = SerialBench {
        model,
        runs: samples.len(),
        time_to_first_token_ms: column(0),
        time_to_first_sentence_ms: column(1),
        cancel_ack_ms: column(2),
        cancel_ack_max_ms: samples.iter().map(|s| s[2]).fold(0.0, f64::max),
        long_prompt_tokens,
        prefill_cancel_ack_ms: column(3),
        prefill_cancel_ack_max_ms: samples.iter().map(|s| s[3]).fold(0.0, f64::max),
        tokens_per_second: median(rates),
        samples,
    };
    Ok(report)
}

/// The medians for people.
impl std::fmt::Display for SerialBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "model                  {}", self.model)?;
        writeln!(f, "runs                   {}", self.runs)?;
        writeln!(
            f,
            "time to first token    {:>8.1} ms   (target < 500)",
            self.time_to_first_token_ms
        )?;
        writeln!(
            f,
            "time to first sentence {:>8.1} ms   (target < 1500)",
            self.time_to_first_sentence_ms
        )?;
        writeln!(
            f,
            "cancel acknowledged    {:>8.1} ms   (target < 100; slowest {:.1} ms)",
            self.cancel_ack_ms, self.cancel_ack_max_ms
        )?;
        writeln!(
            f,
            "cancel in prefill      {:>8.1} ms   (target < 100; slowest {:.1} ms; prompt of {} tokens)",
            self.prefill_cancel_ack_ms, self.prefill_cancel_ack_max_ms, self.long_prompt_tokens
        )?;
        write!(
            f,
            "tokens per second      {:>8.1}      (seen on the host)",
            self.tokens_per_second
        )
    }
}
