//! A Wyoming `handle` service, as Home Assistant's Wyoming integration talks to one: events
//! over TCP, each a JSON header line (`type`, `data_length`, `payload_length`) followed by that
//! many bytes of JSON data and of payload. `describe` is answered with `info`; a `transcript`
//! with the streamed answer of Wyoming's specification: `handled-start`, one `handled-chunk` per
//! sentence of the reply, `handled` with the whole reply (for clients that do not stream: Home
//! Assistant's conversation integration reads only `handled` and `not-handled`), `handled-stop`;
//! or `not-handled` when no reply can be had. A `transcript` during a reply cancels it
//! (barge-in): its answer ends with what was said. Each connection is one conversation.

use crate::backend::{Ask, Backend, Conversation, Piece, Reply};
use ember_core::protocol::ChatOptions;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// The Wyoming version Ember's events say they follow (that of the `wyoming` package it is
/// tested with).
pub const WYOMING_VERSION: &str = "1.10.2";
/// Longest header line taken.
const MAX_HEADER: usize = 64 * 1024;
/// Most bytes of data or payload taken with one event.
const MAX_BODY: u64 = 1 << 20;

/// What the service says about itself in `info`.
#[derive(Debug, Clone)]
pub struct Program {
    /// The languages its model speaks (`en`, …).
    pub languages: Vec<String>,
}

/// One Wyoming event.
#[derive(Debug, Clone, PartialEq)]
pub struct WyomingEvent {
    /// Its type (`transcript`, `handled-chunk`, …).
    pub kind: String,
    /// Its data.
    pub data: Map<String, Value>,
}

/// Why an event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The header line was longer than [`MAX_HEADER`].
    #[error("an event header longer than {MAX_HEADER} bytes")]
    LongHeader,
    /// The header or data was not the JSON Wyoming sends.
    #[error("not a Wyoming event: {0}")]
    Malformed(String),
}

/// Reads the next event; `None` at the end of the stream.
pub async fn read_event<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<WyomingEvent>, ReadError> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_HEADER as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.len() > MAX_HEADER {
        return Err(ReadError::LongHeader);
    }
    let malformed = |what: String| ReadError::Malformed(what);
    let header: Value =
        serde_json::from_slice(&line).map_err(|e| malformed(format!("header: {e}")))?;
    let kind = header
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("a header without a type".into()))?
        .to_string();
    let mut data = match header.get("data") {
        Some(Value::Object(data)) => data.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(malformed("data that is not an object".into())),
    };
    let length = |field: &str| -> Result<u64, ReadError> {
        match header.get(field) {
            None | Some(Value::Null) => Ok(0),
            Some(value) => value
                .as_u64()
                .filter(|&n| n <= MAX_BODY)
                .ok_or_else(|| malformed(format!("{field} must be 0 to {MAX_BODY}"))),
        }
    };
    let (data_length, payload_length) = (length("data_length")?, length("payload_length")?);
    if data_length > 0 {
        let mut bytes = vec![0; data_length as usize];
        reader.read_exact(&mut bytes).await?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(more)) => data.extend(more),
            _ => return Err(malformed("data that is not a JSON object".into())),
        }
    }
    if payload_length > 0 {
        // No event a handle service takes has a payload: skip it.
        tokio::io::copy(
            &mut (&mut *reader).take(payload_length),
            &mut tokio::io::sink(),
        )
        .await?;
    }
    Ok(Some(WyomingEvent { kind, data }))
}

/// Writes an event as the `wyoming` package does: header line, then the data.
pub async fn write_event(
    writer: &mut OwnedWriteHalf,
    kind: &str,
    data: Value,
) -> std::io::Result<()> {
    let mut header = json!({"type": kind, "version": WYOMING_VERSION});
    let body = match &data {
        Value::Object(map) if !map.is_empty() => Some(data.to_string()),
        _ => None,
    };
    if let Some(body) = &body {
        header["data_length"] = json!(body.len());
    }
    let mut bytes = header.to_string().into_bytes();
    bytes.push(b'\n');
    if let Some(body) = body {
        bytes.extend_from_slice(body.as_bytes());
    }
    writer.write_all(&bytes).await
}

/// Serves the handle service on `listener` until the process ends.
pub async fn serve(listener: TcpListener, backend: Backend, program: Program) {
    let program = Arc::new(program);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (backend, program) = (backend.clone(), program.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, backend, &program).await {
                        log::info!("wyoming: {peer}: {e}");
                    }
                });
            }
            Err(e) => log::warn!("wyoming: cannot accept a connection: {e}"),
        }
    }
}

/// The `info` event's data.
fn info(backend: &Backend, program: &Program) -> Value {
    let model = &backend.info().model_name;
    let attribution = json!({"name": "Ember", "url": "https://example.invalid/ember"});
    let version = env!("CARGO_PKG_VERSION");
    json!({"handle": [{
        "name": "ember",
        "description": format!("Ember: {model} ({})", backend.info().location),
        "attribution": attribution,
        "installed": true,
        "version": version,
        "models": [{
            "name": model,
            "description": format!("{model}, run by Ember"),
            "attribution": attribution,
            "installed": true,
            "version": null,
            "languages": program.languages,
        }],
        "supports_handled_streaming": true,
        "supports_home_control": false,
    }]})
}

/// The reply a connection waits for: the user's message, the reply's text so far, whether
/// `handled-start` went out, the transcript's context (given back with the answer).
struct Current {
    user: String,
    text: String,
    started: bool,
    context: Option<Value>,
    reply: Reply,
}

impl Current {
    /// Data with the transcript's context, if it had one.
    fn with_context(&self, mut data: Value) -> Value {
        if let Some(context) = &self.context {
            data["context"] = context.clone();
        }
        data
    }

    /// Starts the streamed answer, once.
    async fn start(&mut self, write: &mut OwnedWriteHalf) -> std::io::Result<()> {
        if !self.started {
            self.started = true;
            write_event(write, "handled-start", self.with_context(json!({}))).await?;
        }
        Ok(())
    }

    /// Ends the streamed answer with the reply as far as it went.
    async fn finish(mut self, write: &mut OwnedWriteHalf) -> std::io::Result<(String, String)> {
        self.start(write).await?;
        let handled = self.with_context(json!({"text": self.text}));
        write_event(write, "handled", handled).await?;
        write_event(write, "handled-stop", json!({})).await?;
        Ok((self.user, self.text))
    }
}

/// One client: its events in, the replies' events out, one conversation.
async fn connection(
    stream: tokio::net::TcpStream,
    backend: Backend,
    program: &Program,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let (events, mut incoming) = mpsc::channel(8);
    // Events are read on their own, so that a transcript can interrupt a reply.
    tokio::spawn(async move {
        let mut reader = BufReader::new(read);
        loop {
            let event = read_event(&mut reader).await;
            let last = !matches!(event, Ok(Some(_)) | Err(ReadError::Malformed(_)));
            if events.send(event).await.is_err() || last {
                break;
            }
        }
    });
    let mut turns: Vec<(String, String)> = Vec::new();
    let mut current: Option<Current> = None;
    loop {
        let piece = async {
            match &mut current {
                Some(current) => current.reply.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = incoming.recv() => match event {
                None | Some(Ok(None)) => return Ok(()),
                Some(Err(ReadError::Io(e))) => return Err(e),
                Some(Err(e)) => {
                    let text = e.to_string();
                    write_event(&mut write, "error", json!({"text": text, "code": "bad-event"})).await?;
                    if matches!(e, ReadError::LongHeader) {
                        return Ok(());
                    }
                }
                Some(Ok(Some(event))) => match event.kind.as_str() {
                    "describe" => write_event(&mut write, "info", info(&backend, program)).await?,
                    "ping" => write_event(&mut write, "pong", json!({})).await?,
                    "transcript" => {
                        if let Some(old) = current.take() {
                            // Barge-in: the old reply stops where it is.
                            old.reply.cancel();
                            turns.push(old.finish(&mut write).await?);
                        }
                        let text = event.data.get("text").and_then(Value::as_str).unwrap_or("").trim();
                        if text.is_empty() {
                            write_event(&mut write, "not-handled", json!({"text": "I did not hear a question."})).await?;
                            continue;
                        }
                        let ask = Ask {
                            conversation: Conversation {
                                system: None,
                                turns: turns.clone(),
                                user: text.to_string(),
                            },
                            options: ChatOptions { sentences: true, ..ChatOptions::default() },
                        };
                        match backend.submit(ask) {
                            Ok(reply) => {
                                let context = event.data.get("context").filter(|c| c.is_object()).cloned();
                                current = Some(Current { user: text.to_string(), text: String::new(), started: false, context, reply });
                            }
                            Err(busy) => {
                                let text = format!("I am busy; ask again in {} seconds.", busy.retry_after.as_secs().max(1));
                                write_event(&mut write, "not-handled", json!({"text": text})).await?;
                            }
                        }
                    }
                    // Other events (audio, detection, …) are not for a handle service.
                    _ => {}
                },
            },
            piece = piece => {
                let Some(now) = current.as_mut() else { continue };
                match piece {
                    Some(Piece::Text(text)) => now.text.push_str(&text),
                    Some(Piece::Sentence(sentence)) => {
                        now.start(&mut write).await?;
                        write_event(&mut write, "handled-chunk", json!({"text": sentence})).await?;
                    }
                    Some(Piece::End(_)) => {
                        if let Some(done) = current.take() {
                            turns.push(done.finish(&mut write).await?);
                        }
                    }
                    Some(Piece::Failed(failure)) => {
                        if let Some(failed) = current.take() {
                            if failed.started {
                                failed.finish(&mut write).await?;
                            } else {
                                let text = format!("I cannot answer: {failure}");
                                write_event(&mut write, "not-handled", json!({"text": text})).await?;
                            }
                        }
                    }
                    None => {
                        current = None;
                        write_event(&mut write, "not-handled", json!({"text": "the reply was lost"})).await?;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<Option<WyomingEvent>, ReadError> {
        let mut reader = BufReader::new(bytes);
        read_event(&mut reader).await
    }

    #[tokio::test]
    async fn events_read_as_the_wyoming_package_writes_them() {
        let event = read(b"{\"type\":\"transcript\",\"version\":\"1.10.2\",\"data_length\":16}\n{\"text\":\"Hello\"}")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.kind, "transcript");
        assert_eq!(event.data["text"], "Hello");
        // Data in the header, and a payload skipped.
        let event = read(b"{\"type\":\"x\",\"data\":{\"a\":1},\"payload_length\":3}\nabc")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.data["a"], 1);
        assert!(read(b"").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bad_events_are_typed_errors() {
        for bad in [
            &b"not json\n"[..],
            b"{\"data\":{}}\n",
            b"{\"type\":\"x\",\"data_length\":-1}\n",
            b"{\"type\":\"x\",\"data_length\":99999999999}\n",
            b"{\"type\":\"x\",\"data_length\":2}\n[]",
        ] {
            assert!(
                matches!(read(bad).await, Err(ReadError::Malformed(_))),
                "{bad:?}"
            );
        }
        let long = vec![b' '; MAX_HEADER + 10];
        assert!(matches!(read(&long).await, Err(ReadError::LongHeader)));
        assert!(matches!(
            read(b"{\"type\":\"x\",\"data_length\":20}\n{}").await,
            Err(ReadError::Io(_))
        ));
    }
}
