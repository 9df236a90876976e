//! A multi-turn conversation over one KV cache: each turn prefills only its own new tokens.
//! When the next turn would not fit, the oldest turns are dropped (the system prompt is kept)
//! and the cache is rebuilt from what remains.

use crate::{
    EngineError, FinishReason, GenerateOptions, Generation, LanguageModel, Progress, generate_until,
};
use ember_core::chat::{ChatTemplate, Message, Role};
use ember_core::device::{Context, ReplyEnd, ReplyRequest};
use ember_core::protocol::{EndReason, ErrorCode};
use ember_tokenizer::Tokenizer;
use std::ops::ControlFlow;

/// A conversation with a model.
pub struct ChatSession<'a> {
    model: &'a mut dyn LanguageModel,
    tokenizer: &'a Tokenizer,
    template: ChatTemplate<'a>,
    system: Option<String>,
    /// Finished turns: (user, assistant).
    turns: Vec<(String, String)>,
    /// Whether the cache holds the conversation so far (ending inside the last reply).
    cached: bool,
    /// The last reply's final token when generation stopped before end-of-sequence (length
    /// limit, stop sequence, cancel): it was sampled but not yet run through the model.
    unfed: Option<u32>,
    /// Turns dropped to make room by the latest [`ChatSession::say`].
    dropped: usize,
}

impl<'a> ChatSession<'a> {
    /// A new conversation; `system` replaces the template's default system prompt.
    pub fn new(
        model: &'a mut dyn LanguageModel,
        tokenizer: &'a Tokenizer,
        template: ChatTemplate<'a>,
        system: Option<String>,
    ) -> Self {
        model.reset();
        ChatSession {
            model,
            tokenizer,
            template,
            system,
            turns: Vec::new(),
            cached: false,
            unfed: None,
            dropped: 0,
        }
    }

    /// Replaces the system prompt (`None`: the template's default) and forgets the conversation.
    pub fn set_system(&mut self, system: Option<String>) {
        self.system = system;
        self.reset();
    }

    /// The system prompt set by [`ChatSession::new`] or [`ChatSession::set_system`].
    pub fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }

    /// Positions of the context in use.
    pub fn context_used(&self) -> usize {
        self.model.position()
    }

    /// Positions the context holds.
    pub fn context_length(&self) -> usize {
        self.model.context_length()
    }

    /// Old turns the latest [`ChatSession::say`] dropped to make room (0 when it fit).
    pub fn turns_dropped(&self) -> usize {
        self.dropped
    }

    /// Forgets the conversation (the system prompt stays).
    pub fn reset(&mut self) {
        self.turns.clear();
        self.model.reset();
        self.cached = false;
        self.unfed = None;
    }

    /// Finished turns, oldest first.
    pub fn turns(&self) -> &[(String, String)] {
        &self.turns
    }

    /// The whole conversation from `first_turn` on, plus `user`, rendered for a fresh cache.
    fn render_from(&self, first_turn: usize, user: &str) -> Result<Vec<u32>, EngineError> {
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(Message::new(Role::System, system));
        }
        for (question, answer) in &self.turns[first_turn..] {
            messages.push(Message::new(Role::User, question));
            messages.push(Message::new(Role::Assistant, answer));
        }
        messages.push(Message::new(Role::User, user));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = self.template.render(&messages, true, &mut text);
        Ok(self.tokenizer.encode(&text)?)
    }

    /// Generates the reply a device asked for ([`ember_core::device::Output::Reply`]), as
    /// [`ChatSession::say`] does, and reports how it ended in the device's terms.
    pub fn reply(
        &mut self,
        request: &ReplyRequest,
        on_progress: &mut dyn FnMut(Progress<'_>) -> ControlFlow<FinishReason>,
    ) -> ReplyEnd {
        let options = GenerateOptions {
            max_tokens: request.max_tokens as usize,
            sampling: request.sampling,
        };
        match self.say(&request.text, &options, on_progress) {
            Ok(generation) => ReplyEnd::Finished {
                reason: match generation.finish {
                    FinishReason::Eos => EndReason::Eos,
                    FinishReason::Length => EndReason::Length,
                    FinishReason::Stop => EndReason::Stop,
                    FinishReason::Cancelled => EndReason::Cancelled,
                },
                prompt_tokens: generation.stats.prompt_tokens as u32,
                generated_tokens: generation.stats.generated_tokens as u32,
                decode_tokens_per_second: generation.stats.decode_tokens_per_second as f32,
                turns_dropped: self.dropped as u32,
                context: Context {
                    turns: self.turns.len() as u32,
                    used: self.context_used() as u32,
                },
            },
            Err(e) => ReplyEnd::Failed {
                code: match e {
                    EngineError::PromptTooLong { .. } => ErrorCode::TooLong,
                    _ => ErrorCode::Engine,
                },
                detail: e.to_string(),
            },
        }
    }

    /// Sends the user's message and generates the reply, reporting its prefill and streaming
    /// its text to `on_progress`, which may end the reply early (see [`generate_until`]): the
    /// reply so far stays in the conversation, unless it was cancelled before its first token
    /// (then the turn is dropped, as if it had not been said).
    pub fn say(
        &mut self,
        user: &str,
        options: &GenerateOptions,
        on_progress: &mut dyn FnMut(Progress<'_>) -> ControlFlow<FinishReason>,
    ) -> Result<Generation, EngineError> {
        self.dropped = 0;
        let context = self.model.context_length();
        // Room kept for the reply: all of `max_tokens` if it fits in half the context; a longer
        // reply ends when the context is full.
        let reserve = options.max_tokens.clamp(1, (context / 2).max(1));
        let room = |tokens: usize| tokens + reserve <= context;
        let mut prompt = None;
        if self.cached {
            let mut text = String::new();
            let _ = self.template.render_next_turn(user, &mut text);
            let mut next: Vec<u32> = self.unfed.into_iter().collect();
            next.extend(self.tokenizer.encode(&text)?);
            if room(self.model.position() + next.len()) {
                prompt = Some(next);
            }
        }
        let prompt = match prompt {
            Some(next) => next,
            None => {
                // Start over from the recent turns that fit in half the context, leaving the
                // other half for the turns to come (so the next turns continue the cache
                // instead of rebuilding it every time).
                // The cache is empty from here on, even if no turn fits below.
                self.model.reset();
                self.cached = false;
                let mut first = 0;
                let ids = loop {
                    let ids = self.render_from(first, user)?;
                    let last_chance = first == self.turns.len();
                    if room(ids.len() + context / 2) || (last_chance && room(ids.len())) {
                        break ids;
                    }
                    if last_chance {
                        return Err(EngineError::PromptTooLong {
                            prompt: ids.len() + reserve,
                            context,
                        });
                    }
                    first += 1;
                };
                self.turns.drain(..first);
                self.dropped = first;
                ids
            }
        };
        // Until the reply is complete the cache holds a partial turn.
        self.cached = false;
        self.unfed = None;
        let generation = generate_until(self.model, self.tokenizer, &prompt, options, on_progress)?;
        if generation.finish == FinishReason::Cancelled && generation.tokens.is_empty() {
            // The cache may hold part of the prompt: the next turn starts over.
            return Ok(generation);
        }
        self.turns.push((user.to_string(), generation.text.clone()));
        self.cached = true;
        if generation.finish != FinishReason::Eos {
            self.unfed = generation.tokens.last().copied();
        }
        Ok(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Counting, tokenizer};
    use ember_core::sampler::SamplingConfig;

    fn options() -> GenerateOptions {
        GenerateOptions {
            max_tokens: 4,
            sampling: SamplingConfig::default(),
        }
    }

    /// A reply cancelled during its prompt's prefill leaves no turn, and the next turn starts
    /// over from a fresh cache (the cache held part of the cancelled prompt).
    #[test]
    fn a_reply_cancelled_in_its_prefill_is_not_a_turn() {
        let tokenizer = tokenizer();
        let mut model = Counting::new(usize::MAX);
        let long = "tell me everything about the sea and the ships on it ".repeat(3);
        let mut chat = ChatSession::new(&mut model, &tokenizer, ChatTemplate::chatml(None), None);
        let first = chat
            .say("hello", &options(), &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(first.tokens.len(), 4);
        let cancelled = chat
            .say(&long, &options(), &mut |progress| match progress {
                Progress::Prefill { .. } => ControlFlow::Break(FinishReason::Cancelled),
                Progress::Text(_) => ControlFlow::Continue(()),
            })
            .unwrap();
        assert_eq!(cancelled.finish, FinishReason::Cancelled);
        assert!(cancelled.tokens.is_empty());
        assert_eq!(chat.turns().len(), 1);
        assert!(
            chat.context_used() < first.stats.prompt_tokens + 4 + cancelled.stats.prompt_tokens
        );

        let expected = chat.render_from(0, "and then?").unwrap().len();
        let next = chat
            .say("and then?", &options(), &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(chat.turns().len(), 2);
        // Rebuilt from position 0: the first turn, its reply and the new message.
        assert_eq!(next.stats.prompt_tokens, expected);
        assert_eq!(chat.context_used(), expected + 3);
    }
}
