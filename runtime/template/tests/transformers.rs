//! Ember renders real models' chat templates as Hugging Face's transformers does: every case of
//! `tests/fixtures/templates/expected.json` (made by `make_expected.py` there, with jinja2 set
//! up as transformers 5.24.0's `apply_chat_template`, and checked against transformers itself),
//! text for text, and the same refusals.

use ember_template::{ChatTemplate, Message, Role, SpecialTokens, TemplateError};
use serde_json::Value;
use std::path::Path;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/templates")
}

fn role(name: &str) -> Role {
    match name {
        "system" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => panic!("role {other}"),
    }
}

#[test]
fn real_templates_render_as_transformers_renders_them() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let date =
        chrono::NaiveDate::parse_from_str(&expected["date"].as_str().unwrap()[..10], "%Y-%m-%d")
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
    let mut checked = 0;
    for (name, model) in expected["templates"].as_object().unwrap() {
        let source =
            std::fs::read_to_string(fixtures().join(model["file"].as_str().unwrap())).unwrap();
        let token = |key: &str| model[key].as_str().map(str::to_string);
        let special = SpecialTokens {
            bos: token("bos_token"),
            eos: token("eos_token"),
        };
        let template = ChatTemplate::new(&source, special).unwrap().at(date);
        for case in model["cases"].as_array().unwrap() {
            let messages: Vec<Message<'_>> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    Message::new(
                        role(m["role"].as_str().unwrap()),
                        m["content"].as_str().unwrap(),
                    )
                })
                .collect();
            let generation = case["add_generation_prompt"].as_bool().unwrap();
            let rendered = template.render(&messages, generation);
            let what = format!(
                "{name} {} (generation prompt {generation})",
                case["conversation"]
            );
            match case["raises"].as_str() {
                Some(message) => assert_eq!(
                    rendered,
                    Err(TemplateError::Render(message.to_string())),
                    "{what}"
                ),
                None => assert_eq!(
                    rendered.as_deref(),
                    Ok(case["text"].as_str().unwrap()),
                    "{what}"
                ),
            }
            checked += 1;
        }
    }
    assert!(checked >= 100, "only {checked} cases");
}
