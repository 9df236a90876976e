//! The OpenAI chat API over HTTP (axum on hyper and tokio): `GET /v1/models` and
//! `POST /v1/chat/completions`, plain or streamed as server-sent events, with OpenAI's error
//! objects. The messages of each request become a [`Conversation`] for the backend.

use crate::backend::{Ask, Backend, Busy, Conversation, Ending, Failure, Piece};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ember_core::protocol::{self, ChatOptions, EndReason, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The largest request body taken (larger: 413).
pub const MAX_BODY: usize = 1 << 20;

/// What the handlers share.
#[derive(Clone)]
struct Api {
    backend: Backend,
    /// The key clients must send as `Authorization: Bearer KEY`, if any.
    api_key: Option<Arc<str>>,
    /// When the server started (the model's `created`).
    started: u64,
    /// Completions answered so far (for their ids).
    count: Arc<AtomicU64>,
}

/// The HTTP API in front of `backend`; with `api_key`, every request must carry it.
pub fn router(backend: Backend, api_key: Option<String>) -> Router {
    let api = Api {
        backend,
        api_key: api_key.map(Arc::from),
        started: now(),
        count: Arc::new(AtomicU64::new(0)),
    };
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(unknown_url)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(api.clone(), authorize))
        .with_state(api)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error as OpenAI's API sends it: a status and `{"error": {message, type, param, code}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// A 400 about the request's field `param`.
    fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    fn busy(busy: Busy) -> Self {
        let seconds = busy.retry_after.as_secs().max(1);
        ApiError {
            retry_after: Some(seconds),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the model is busy with other requests and its queue is full; try again in {seconds} s"
                ),
            )
            .code("busy")
        }
    }

    fn failure(failure: &Failure) -> Self {
        match failure {
            Failure::Refused { code, detail } => {
                let (status, code) = match code {
                    ErrorCode::TooLong => (StatusCode::BAD_REQUEST, "context_length_exceeded"),
                    ErrorCode::BadSetting | ErrorCode::BadField | ErrorCode::OutOfOrder => {
                        (StatusCode::BAD_REQUEST, "invalid_value")
                    }
                    ErrorCode::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "model_error"),
                };
                ApiError::new(status, format!("the model refused the request: {detail}")).code(code)
            }
            Failure::Unavailable(why) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("the device stopped answering: {why}"),
            )
            .code("device_unavailable"),
        }
    }

    fn stopped() -> Self {
        ApiError::failure(&Failure::Unavailable(
            "the reply ended without its end".into(),
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Requires `Authorization: Bearer KEY` when the server has a key.
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    if let Some(key) = &api.api_key {
        let sent = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent != Some(&**key) {
            let message = match sent {
                None => "missing API key: send the header `Authorization: Bearer KEY`",
                Some(_) => "incorrect API key provided",
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, message)
                .code("invalid_api_key")
                .into_response();
        }
    }
    next.run(request).await
}

async fn unknown_url(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("unknown request URL: {method} {uri} (this server has GET /v1/models and POST /v1/chat/completions)"),
    )
    .code("unknown_url")
}

async fn models(State(api): State<Api>) -> axum::Json<Value> {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": api.backend.info().model_name,
            "object": "model",
            "created": api.started,
            "owned_by": "ember",
        }],
    }))
}

/// The request's fields Ember reads (others are ignored).
#[derive(Deserialize)]
struct CompletionRequest {
    messages: Vec<MessageIn>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct MessageIn {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// A message's content: text, or parts of which only text is taken.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// A request checked: what to ask, whether to stream, whether to send usage when streaming.
struct Checked {
    ask: Ask,
    stream: bool,
    include_usage: bool,
}

impl CompletionRequest {
    fn check(self) -> Result<Checked, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
        if self.logprobs == Some(true) {
            return Err(ApiError::invalid("logprobs", "logprobs are not supported"));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid("tools", "tools are not supported"));
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(n), _) => Some(("max_completion_tokens", n)),
            (None, Some(n)) => Some(("max_tokens", n)),
            (None, None) => None,
        };
        let max_tokens = max_tokens
            .map(|(param, n)| {
                u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
                    ApiError::invalid(param, format!("{param} must be at least 1, not {n}"))
                })
            })
            .transpose()?;
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be between 0 and 2, not {t}"),
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be above 0 and at most 1, not {p}"),
            ));
        }
        let stops = match self.stop {
            None => Vec::new(),
            Some(Stop::One(stop)) => vec![stop],
            Some(Stop::Many(stops)) => stops,
        };
        if stops.len() > protocol::MAX_STOPS {
            return Err(ApiError::invalid(
                "stop",
                format!("at most {} stop sequences", protocol::MAX_STOPS),
            ));
        }
        let mut stop = heapless::Vec::new();
        for s in &stops {
            if s.is_empty() || s.len() > protocol::MAX_STOP_BYTES {
                return Err(ApiError::invalid(
                    "stop",
                    format!(
                        "stop sequence {s:?} must be 1 to {} bytes",
                        protocol::MAX_STOP_BYTES
                    ),
                ));
            }
            let _ = stop.push(protocol::truncated(s));
        }
        let options = ChatOptions {
            max_tokens,
            temperature: self.temperature.map(|t| t as f32),
            top_p: self.top_p.map(|p| p as f32),
            // Negative seeds are seeds too.
            seed: self.seed.map(|s| s as u64),
            stop,
            ..ChatOptions::default()
        };
        let stream = self.stream.unwrap_or(false);
        let include_usage = self
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        Ok(Checked {
            ask: Ask {
                conversation: conversation(self.messages)?,
                options,
            },
            stream,
            include_usage,
        })
    }
}

/// The messages as a conversation: an optional system (or developer) message first, then
/// user and assistant messages in turn, the last one the user's.
fn conversation(messages: Vec<MessageIn>) -> Result<Conversation, ApiError> {
    let mut conversation = Conversation::default();
    let mut user: Option<String> = None;
    let count = messages.len();
    for (i, message) in messages.into_iter().enumerate() {
        let role = message.role.as_str();
        let text = text(i, message.content, role)?;
        match role {
            "system" | "developer" if i == 0 => {
                if text.len() > protocol::MAX_TEXT {
                    return Err(ApiError::invalid(
                        "messages[0].content",
                        format!(
                            "a system message may have at most {} bytes, this one has {}",
                            protocol::MAX_TEXT,
                            text.len()
                        ),
                    ));
                }
                conversation.system = Some(text);
            }
            "system" | "developer" => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    "a system message may only come first",
                ));
            }
            "user" if user.is_none() => user = Some(text),
            "assistant" if user.is_some() => {
                conversation
                    .turns
                    .push((user.take().unwrap_or_default(), text));
            }
            "user" | "assistant" => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    "after the system message, user and assistant messages must take turns, starting with the user's",
                ));
            }
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "unknown role {other:?}: messages are system, developer, user or assistant"
                    ),
                ));
            }
        }
    }
    conversation.user = user.ok_or_else(|| {
        let message = if count == 0 {
            "messages must not be empty"
        } else {
            "the last message must be the user's"
        };
        ApiError::invalid("messages", message)
    })?;
    Ok(conversation)
}

/// A message's text (its text parts joined).
fn text(i: usize, content: Option<Content>, role: &str) -> Result<String, ApiError> {
    match content {
        Some(Content::Text(text)) => Ok(text),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(part)) => text.push_str(&part),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content"),
                            format!("content parts of type {kind:?} are not supported (text only)"),
                        ));
                    }
                }
            }
            Ok(text)
        }
        None if role == "assistant" => Ok(String::new()),
        None => Err(ApiError::invalid(
            format!("messages[{i}].content"),
            "the message has no content",
        )),
    }
}

/// OpenAI's `finish_reason` for how a reply ended.
fn finish_reason(reason: Option<EndReason>) -> &'static str {
    match reason {
        Some(EndReason::Length) => "length",
        _ => "stop",
    }
}

/// Token counts: the whole prompt (the conversation in the device's context before the reply),
/// the reply, and how much of the prompt was already in the cache. The context holds the prompt
/// and the generated tokens, but for the last one unless the model ended the reply (sampled
/// after the end-of-turn token was, it was fed; the end-of-turn token is not counted).
fn usage(ending: &Ending) -> Value {
    let stats = &ending.stats;
    let unfed = u32::from(ending.reason != Some(EndReason::Eos) && stats.generated_tokens > 0);
    let fed = stats.generated_tokens - unfed;
    let prompt = stats.context_used.saturating_sub(fed);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": prompt + stats.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": prompt.saturating_sub(stats.prompt_tokens)},
    })
}

async fn chat_completions(
    State(api): State<Api>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than {MAX_BODY} bytes")
        } else {
            rejection.body_text()
        };
        ApiError::new(status, message)
    })?;
    let request: CompletionRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not a chat completion request: {e}"),
        )
    })?;
    let checked = request.check()?;
    let mut reply = api.backend.submit(checked.ask).map_err(ApiError::busy)?;
    let number = api.count.fetch_add(1, Ordering::Relaxed);
    let head = Head {
        id: format!("chatcmpl-{:x}{number:06x}", api.started),
        created: now(),
        model: api.backend.info().model_name.clone(),
    };
    if !checked.stream {
        let mut text = String::new();
        return loop {
            match reply.next().await {
                Some(Piece::Text(piece)) => text.push_str(&piece),
                Some(Piece::Sentence(_)) => {}
                Some(Piece::End(ending)) => break Ok(head.completion(&text, &ending)),
                Some(Piece::Failed(failure)) => break Err(ApiError::failure(&failure)),
                None => break Err(ApiError::stopped()),
            }
        };
    }
    // The status is sent with the first piece: a request the device refuses gets its error.
    let first = match reply.next().await {
        Some(Piece::Failed(failure)) => return Err(ApiError::failure(&failure)),
        Some(piece) => piece,
        None => return Err(ApiError::stopped()),
    };
    let stream = Stream {
        head,
        reply,
        pending: Some(first),
        include_usage: checked.include_usage,
        stage: Stage::Role,
    };
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        let event = stream.next_event().await?;
        Some((Ok::<_, Infallible>(event), stream))
    });
    Ok(Sse::new(events).into_response())
}

/// What every answer to one request repeats.
struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    /// The whole answer.
    fn completion(&self, text: &str, ending: &Ending) -> Response {
        axum::Json(json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish_reason(ending.reason),
            }],
            "usage": usage(ending),
        }))
        .into_response()
    }

    /// One chunk of a streamed answer: its `choices`, and `usage` when the client asked for it
    /// (null but in the last chunk).
    fn chunk(&self, choices: Value, usage: Option<Value>) -> SseEvent {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        SseEvent::default().data(chunk.to_string())
    }
}

/// Where a streamed answer is.
enum Stage {
    /// The first chunk (the assistant's role) is next.
    Role,
    /// Text chunks.
    Text,
    /// The usage chunk is next (then `[DONE]`).
    Usage(Ending),
    /// `[DONE]` is next.
    Done,
    /// Sent everything.
    Over,
}

/// A streamed answer: chunks of the reply as server-sent events, then `[DONE]`.
struct Stream {
    head: Head,
    reply: crate::backend::Reply,
    pending: Option<Piece>,
    include_usage: bool,
    stage: Stage,
}

impl Stream {
    /// A chunk of the one choice: its `delta` and, at the end, its `finish_reason`.
    fn choice_chunk(&self, delta: Value, finish: Option<&str>) -> SseEvent {
        let choices =
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        self.head
            .chunk(choices, self.include_usage.then_some(Value::Null))
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            match std::mem::replace(&mut self.stage, Stage::Text) {
                Stage::Role => {
                    return Some(
                        self.choice_chunk(json!({"role": "assistant", "content": ""}), None),
                    );
                }
                Stage::Usage(ending) => {
                    self.stage = Stage::Done;
                    return Some(self.head.chunk(json!([]), Some(usage(&ending))));
                }
                Stage::Done => {
                    self.stage = Stage::Over;
                    return Some(SseEvent::default().data("[DONE]"));
                }
                Stage::Over => {
                    self.stage = Stage::Over;
                    return None;
                }
                Stage::Text => {}
            }
            let piece = match self.pending.take() {
                Some(piece) => Some(piece),
                None => self.reply.next().await,
            };
            match piece {
                Some(Piece::Text(text)) => {
                    return Some(self.choice_chunk(json!({"content": text}), None));
                }
                Some(Piece::Sentence(_)) => {}
                Some(Piece::End(ending)) => {
                    self.stage = if self.include_usage {
                        Stage::Usage(ending)
                    } else {
                        Stage::Done
                    };
                    let finish = finish_reason(ending.reason);
                    return Some(self.choice_chunk(json!({}), Some(finish)));
                }
                failed => {
                    // An error chunk, as OpenAI sends one mid-stream; no `[DONE]` after it.
                    self.stage = Stage::Over;
                    let error = match failed {
                        Some(Piece::Failed(failure)) => ApiError::failure(&failure),
                        _ => ApiError::stopped(),
                    };
                    return Some(SseEvent::default().data(error.body().to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(list: &[(&str, &str)]) -> Vec<MessageIn> {
        list.iter()
            .map(|(role, text)| MessageIn {
                role: role.to_string(),
                content: Some(Content::Text(text.to_string())),
            })
            .collect()
    }

    #[test]
    fn messages_become_a_conversation() {
        let c = conversation(messages(&[
            ("system", "Be brief."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "Bye"),
        ]))
        .unwrap();
        assert_eq!(c.system.as_deref(), Some("Be brief."));
        assert_eq!(c.turns, vec![("Hi".to_string(), "Hello!".to_string())]);
        assert_eq!(c.user, "Bye");
    }

    #[test]
    fn messages_out_of_turn_are_refused_naming_the_message() {
        for (list, param) in [
            (&[("user", "a"), ("user", "b")][..], "messages[1].role"),
            (&[("assistant", "a"), ("user", "b")][..], "messages[0].role"),
            (&[("user", "a"), ("system", "b")][..], "messages[1].role"),
            (&[("user", "a"), ("tool", "b")][..], "messages[1].role"),
            (&[("user", "a"), ("assistant", "b")][..], "messages"),
            (&[][..], "messages"),
        ] {
            let error = conversation(messages(list)).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert_eq!(error.param.as_deref(), Some(param), "{list:?}");
        }
    }
}
