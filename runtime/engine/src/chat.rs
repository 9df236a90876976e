//! A multi-turn conversation over one KV cache: each turn prefills only its own new tokens.
//! The whole conversation is rendered with the model's chat template each turn; when the text
//! the cache holds is a prefix of it, only the rest is fed, otherwise (a template that rewrites
//! earlier turns) the cache is rebuilt. When the next turn would not fit, the oldest turns are
//! dropped (the system prompt is kept) and the cache is rebuilt from what remains.
//!
//! Messages can also join the conversation without generating ([`ChatSession::remember`]): a
//! host rebuilding a conversation it holds sends the earlier messages as they are, then says
//! the last user message. Remembered turns are appended, so the cache stays a prefix of the
//! conversation and the next turn prefills only them and its own text.

use crate::{
    EngineError, FinishReason, GenerateOptions, Generation, LanguageModel, Progress, generate_until,
};
use ember_core::device::{Context, ReplyEnd, ReplyRequest};
use ember_core::protocol::{self, EndReason, ErrorCode};
use ember_template::{ChatTemplate, Message, Role, SpecialTokens, TemplateError};
use ember_tokenizer::Tokenizer;
use std::ops::ControlFlow;

/// How a model's conversations become tokens: its chat template, and the beginning-of-sequence
/// token when its prompts start with one.
#[derive(Debug)]
pub struct ChatFormat {
    /// The model's template ([`ChatTemplate::plain`] when it has none).
    template: ChatTemplate,
    /// The token a fresh prompt starts with, unless the template wrote it already.
    bos: Option<u32>,
}

impl ChatFormat {
    /// The format of a model with the Jinja template `source` (`None`: plain text), its
    /// `tokenizer` (whose special tokens the template may write) and whether its prompts start
    /// with the beginning-of-sequence token.
    pub fn new(
        source: Option<&str>,
        tokenizer: &Tokenizer,
        add_bos: bool,
    ) -> Result<Self, TemplateError> {
        let text = |id: u32| tokenizer.decode(&[id]);
        let template = match source {
            Some(source) => ChatTemplate::new(
                source,
                SpecialTokens {
                    bos: tokenizer.bos_id().map(text),
                    eos: Some(text(tokenizer.eos_id())),
                },
            )?,
            None => ChatTemplate::plain(),
        };
        Ok(ChatFormat {
            template,
            bos: tokenizer.bos_id().filter(|_| add_bos),
        })
    }

    /// The text of `messages` (ending with the opening of the assistant's reply).
    pub fn render(&self, messages: &[Message<'_>]) -> Result<String, EngineError> {
        Ok(self.template.render(messages, true)?)
    }

    /// The tokens of a fresh prompt of `text`: the beginning-of-sequence token (if the model's
    /// prompts start with one and the text does not) and the text's tokens.
    pub fn encode(&self, tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, EngineError> {
        let mut ids = tokenizer.encode(text)?;
        if let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }
}

/// A conversation with a model.
pub struct ChatSession<'a> {
    model: &'a mut dyn LanguageModel,
    tokenizer: &'a Tokenizer,
    format: ChatFormat,
    system: Option<String>,
    /// Finished turns: (user, assistant).
    turns: Vec<(String, String)>,
    /// A remembered user message no answer has followed yet.
    held: Option<String>,
    /// The last turn's reply was remembered just before: more remembered assistant text
    /// continues it.
    answering: bool,
    /// The text the cache holds when it holds the conversation so far (the rendered prompt and
    /// the last reply).
    cached: Option<String>,
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
        format: ChatFormat,
        system: Option<String>,
    ) -> Self {
        model.reset();
        ChatSession {
            model,
            tokenizer,
            format,
            system,
            turns: Vec::new(),
            held: None,
            answering: false,
            cached: None,
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

    /// Forgets the conversation, remembered messages included (the system prompt stays).
    pub fn reset(&mut self) {
        self.turns.clear();
        self.held = None;
        self.answering = false;
        self.model.reset();
        self.cached = None;
        self.unfed = None;
    }

    /// Finished turns, oldest first (remembered ones too; not a held user message).
    pub fn turns(&self) -> &[(String, String)] {
        &self.turns
    }

    /// Adds a message to the conversation without generating (a device's
    /// [`ember_core::device::Output::Remember`]); the model sees it with the next
    /// [`ChatSession::say`].
    ///
    /// Consecutive messages of one role join into one (the text appended with no separator):
    /// a user message is held until an assistant message answers it (a finished turn) or
    /// [`ChatSession::say`] does (its message is appended to the held one); an assistant
    /// message answers the held user message, or continues the answer remembered just before
    /// it. An assistant message with neither (an order a device refuses) answers an empty user
    /// message.
    pub fn remember(&mut self, role: protocol::Role, text: &str) {
        match role {
            protocol::Role::User => {
                self.answering = false;
                self.held.get_or_insert_default().push_str(text);
            }
            protocol::Role::Assistant => {
                if let Some(user) = self.held.take() {
                    self.turns.push((user, text.to_string()));
                } else if self.answering
                    && let Some((_, reply)) = self.turns.last_mut()
                {
                    reply.push_str(text);
                } else {
                    self.turns.push((String::new(), text.to_string()));
                }
                self.answering = true;
            }
        }
    }

    /// The template's rendering of the conversation from `first_turn` on, plus `user`.
    fn render_from(&self, first_turn: usize, user: &str) -> Result<String, EngineError> {
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(Message::new(Role::System, system));
        }
        for (question, answer) in &self.turns[first_turn..] {
            messages.push(Message::new(Role::User, question));
            messages.push(Message::new(Role::Assistant, answer));
        }
        messages.push(Message::new(Role::User, user));
        self.format.render(&messages)
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
    /// (then the turn is dropped, as if it had not been said). A user message held by
    /// [`ChatSession::remember`] comes first: the user's message is it with `user` appended
    /// (it is used up, whatever becomes of the reply).
    pub fn say(
        &mut self,
        user: &str,
        options: &GenerateOptions,
        on_progress: &mut dyn FnMut(Progress<'_>) -> ControlFlow<FinishReason>,
    ) -> Result<Generation, EngineError> {
        self.answering = false;
        let joined = self.held.take().map(|held| held + user);
        let user = joined.as_deref().unwrap_or(user);
        self.dropped = 0;
        let context = self.model.context_length();
        // Room kept for the reply: all of `max_tokens` if it fits in half the context; a longer
        // reply ends when the context is full.
        let reserve = options.max_tokens.clamp(1, (context / 2).max(1));
        let room = |tokens: usize| tokens + reserve <= context;
        let mut prompt = None;
        if let Some(cached) = &self.cached {
            let whole = self.render_from(0, user)?;
            if let Some(rest) = whole.strip_prefix(cached.as_str()) {
                let mut next: Vec<u32> = self.unfed.into_iter().collect();
                next.extend(self.tokenizer.encode(rest)?);
                if room(self.model.position() + next.len()) {
                    prompt = Some((whole, next));
                }
            }
        }
        let (text, prompt) = match prompt {
            Some(next) => next,
            None => {
                // Start over from the recent turns that fit in half the context, leaving the
                // other half for the turns to come (so the next turns continue the cache
                // instead of rebuilding it every time).
                // The cache is empty from here on, even if no turn fits below.
                self.model.reset();
                self.cached = None;
                let mut first = 0;
                let (text, ids) = loop {
                    let text = self.render_from(first, user)?;
                    let ids = self.format.encode(self.tokenizer, &text)?;
                    let last_chance = first == self.turns.len();
                    if room(ids.len() + context / 2) || (last_chance && room(ids.len())) {
                        break (text, ids);
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
                (text, ids)
            }
        };
        // Until the reply is complete the cache holds a partial turn.
        self.cached = None;
        self.unfed = None;
        let generation = generate_until(self.model, self.tokenizer, &prompt, options, on_progress)?;
        if generation.finish == FinishReason::Cancelled && generation.tokens.is_empty() {
            // The cache may hold part of the prompt: the next turn starts over.
            return Ok(generation);
        }
        self.turns.push((user.to_string(), generation.text.clone()));
        self.cached = Some(text + &generation.text);
        if generation.finish != FinishReason::Eos {
            self.unfed = generation.tokens.last().copied();
        }
        Ok(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Counting, chatml, tokenizer};
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
        let mut chat = ChatSession::new(&mut model, &tokenizer, chatml(&tokenizer), None);
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

        let text = chat.render_from(0, "and then?").unwrap();
        let expected = chat.format.encode(&tokenizer, &text).unwrap().len();
        let next = chat
            .say("and then?", &options(), &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(chat.turns().len(), 2);
        // Rebuilt from position 0: the first turn, its reply and the new message.
        assert_eq!(next.stats.prompt_tokens, expected);
        assert_eq!(chat.context_used(), expected + 3);
    }

    /// A template that renders earlier turns differently from how they were generated (here,
    /// like DeepSeek-R1's, a generation prompt that the finished turn does not keep): the next
    /// turn rebuilds the cache from the whole conversation instead of feeding a wrong suffix.
    #[test]
    fn a_template_that_rewrites_earlier_turns_rebuilds_the_cache() {
        let tokenizer = tokenizer();
        let mut model = Counting::new(usize::MAX);
        let template = "{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}\
                        {% if add_generation_prompt %}assistant:<think>{% endif %}";
        let format = ChatFormat::new(Some(template), &tokenizer, false).unwrap();
        let mut chat = ChatSession::new(&mut model, &tokenizer, format, None);
        let first = chat
            .say("hi", &options(), &mut |_| ControlFlow::Continue(()))
            .unwrap();
        let text = chat.render_from(0, "more").unwrap();
        assert!(text.starts_with(&format!("user:hi;assistant:{};", first.text)));
        let whole = chat.format.encode(&tokenizer, &text).unwrap().len();
        let next = chat
            .say("more", &options(), &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(next.stats.prompt_tokens, whole);
        assert_eq!(chat.context_used(), whole + 3);

        // ChatML keeps every turn as it was generated: the next turn feeds only its own text.
        let mut model = Counting::new(usize::MAX);
        let mut chat = ChatSession::new(&mut model, &tokenizer, chatml(&tokenizer), None);
        chat.say("hi", &options(), &mut |_| ControlFlow::Continue(()))
            .unwrap();
        let next = chat
            .say("more", &options(), &mut |_| ControlFlow::Continue(()))
            .unwrap();
        let own = "<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n";
        // The reply's last token (cut by the length limit) is fed with the next turn.
        assert_eq!(
            next.stats.prompt_tokens,
            1 + tokenizer.encode(own).unwrap().len()
        );
    }

    /// Remembered messages join by role: user pieces into one message, assistant pieces into
    /// its answer (a turn), and a held user message takes the next `say`'s text.
    #[test]
    fn remembered_messages_join_into_turns() {
        use protocol::Role::{Assistant, User};
        let tokenizer = tokenizer();
        let mut model = Counting::new(usize::MAX);
        let mut chat = ChatSession::new(&mut model, &tokenizer, chatml(&tokenizer), None);
        chat.remember(User, "What is ");
        chat.remember(User, "2 + 2?");
        assert!(chat.turns().is_empty(), "a user message alone is no turn");
        chat.remember(Assistant, "Fo");
        chat.remember(Assistant, "ur.");
        chat.remember(User, "And ");
        chat.remember(User, "3 + ");
        assert_eq!(
            chat.turns(),
            [("What is 2 + 2?".to_string(), "Four.".to_string())]
        );
        let reply = chat
            .say("3?", &options(), &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(chat.turns().len(), 2);
        assert_eq!(chat.turns()[1], ("And 3 + 3?".to_string(), reply.text));
        // After a reply nothing is held or answered: an assistant message now answers an
        // empty user message, and a reset forgets a held one.
        chat.remember(Assistant, "unasked");
        assert_eq!(chat.turns()[2], (String::new(), "unasked".to_string()));
        chat.remember(User, "forgotten");
        chat.reset();
        assert!(chat.turns().is_empty());
        chat.say("hi", &options(), &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(chat.turns()[0].0, "hi");
    }

    /// A remembered conversation is what the model sees: the next turn prefills the template's
    /// rendering of it, and remembered turns after a reply extend the cache (only they and the
    /// new message are fed).
    #[test]
    fn remembered_turns_render_into_the_conversation_and_extend_the_cache() {
        use protocol::Role::{Assistant, User};
        let tokenizer = tokenizer();
        let mut model = Counting::new(usize::MAX);
        let mut chat = ChatSession::new(&mut model, &tokenizer, chatml(&tokenizer), None);
        chat.remember(User, "A");
        chat.remember(Assistant, "B");
        let whole = "<|im_start|>user\nA<|im_end|>\n<|im_start|>assistant\nB<|im_end|>\n\
                     <|im_start|>user\nC<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(chat.render_from(0, "C").unwrap(), whole);
        let first = chat
            .say("C", &options(), &mut |_| ControlFlow::Continue(()))
            .unwrap();
        let fed = tokenizer.encode(whole).unwrap().len();
        assert_eq!(first.stats.prompt_tokens, fed);
        chat.remember(User, "D");
        chat.remember(Assistant, "E");
        let next = chat
            .say("F", &options(), &mut |_| ControlFlow::Continue(()))
            .unwrap();
        let rest = "<|im_end|>\n<|im_start|>user\nD<|im_end|>\n<|im_start|>assistant\nE\
                    <|im_end|>\n<|im_start|>user\nF<|im_end|>\n<|im_start|>assistant\n";
        // The first reply's last token (cut by the length limit) is fed with this turn.
        assert_eq!(
            next.stats.prompt_tokens,
            1 + tokenizer.encode(rest).unwrap().len()
        );
        assert_eq!(chat.context_used(), fed + 3 + next.stats.prompt_tokens + 3);
        assert_eq!(chat.turns().len(), 4);
    }
}
