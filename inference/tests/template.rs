#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! The GGUF chat template rendered with minijinja against the same template
//! rendered by Python's jinja2 (`scripts/reference/tokenizer_ids.py` made the
//! fixtures), and templates that fail.
//!
//! Needs the model files: `scripts/models.sh`.

use std::path::PathBuf;

use aios_inference::InferenceError;
use aios_inference::files;
use aios_inference::text::{CHATML_TEMPLATE, ChatMessage, ChatTemplate, Tokenizer};
use candle_core::quantized::gguf_file::Content;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Rendered {
    producer: String,
    bos_token: String,
    eos_token: String,
    cases: Vec<RenderCase>,
}

#[derive(Debug, Deserialize)]
struct RenderCase {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    text: String,
}

fn rendered() -> Rendered {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/templates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn content() -> Content {
    let path = files::model_file(files::SMOLLM2_GGUF).unwrap_or_else(|e| panic!("{e}"));
    Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap()
}

#[test]
fn gguf_template_renders_as_jinja2_did() {
    let content = content();
    let tokenizer = Tokenizer::from_gguf(&content).unwrap();
    let template = ChatTemplate::from_gguf(&content, &tokenizer).unwrap();
    let rendered = rendered();
    assert!(rendered.cases.len() >= 3, "{}", rendered.producer);
    for case in &rendered.cases {
        let ours = template
            .render(&case.messages, case.add_generation_prompt)
            .unwrap();
        assert_eq!(ours, case.text, "messages {:?}", case.messages);
    }
}

#[test]
fn the_fixture_conversation_is_the_chat_prompt() {
    let content = content();
    let tokenizer = Tokenizer::from_gguf(&content).unwrap();
    let template = ChatTemplate::from_gguf(&content, &tokenizer).unwrap();
    let prompt = template
        .render(
            &[
                ChatMessage::system("You are a helpful assistant."),
                ChatMessage::user("What is the capital of France? Answer in one short sentence."),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France? Answer in one short sentence.<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn bos_and_eos_come_from_the_tokenizer() {
    let rendered = rendered();
    let mut content = content();
    content.metadata.insert(
        "tokenizer.chat_template".into(),
        candle_core::quantized::gguf_file::Value::String("{{ bos_token }}|{{ eos_token }}".into()),
    );
    let tokenizer = Tokenizer::from_gguf(&content).unwrap();
    let template = ChatTemplate::from_gguf(&content, &tokenizer).unwrap();
    assert_eq!(
        template.render(&[], false).unwrap(),
        format!("{}|{}", rendered.bos_token, rendered.eos_token)
    );
}

#[test]
fn without_a_gguf_template_chatml_is_used() {
    let mut content = content();
    content.metadata.remove("tokenizer.chat_template");
    let tokenizer = Tokenizer::from_gguf(&content).unwrap();
    let fallback = ChatTemplate::from_gguf(&content, &tokenizer).unwrap();
    let chatml = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
    let messages = [ChatMessage::user("Hi!"), ChatMessage::assistant("Hello.")];
    let expected = "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(fallback.render(&messages, true).unwrap(), expected);
    assert_eq!(chatml.render(&messages, true).unwrap(), expected);
}

#[test]
fn python_string_methods_work() {
    let template = ChatTemplate::new(
        "{% for m in messages %}{{ m['content'].strip().upper() }}{% if m.role.startswith('us') %}!{% endif %}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    assert_eq!(
        template
            .render(&[ChatMessage::user("  hi \n")], false)
            .unwrap(),
        "HI!"
    );
}

#[test]
fn a_template_that_does_not_compile_is_an_error() {
    let error = ChatTemplate::new("{% for m in messages %}{{ m.content }", "", "").unwrap_err();
    assert!(
        matches!(error, InferenceError::InvalidRequest(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("chat template"), "{error}");

    let mut content = content();
    content.metadata.insert(
        "tokenizer.chat_template".into(),
        candle_core::quantized::gguf_file::Value::String("{% if %}".into()),
    );
    let tokenizer = Tokenizer::from_gguf(&content).unwrap();
    let error = ChatTemplate::from_gguf(&content, &tokenizer).unwrap_err();
    assert!(
        error.to_string().contains("tokenizer.chat_template"),
        "{error}"
    );
}

#[test]
fn a_template_that_fails_while_rendering_is_an_error() {
    let template = ChatTemplate::new(
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message must come first') }}{% endif %}",
        "",
        "",
    )
    .unwrap();
    let error = template
        .render(&[ChatMessage::user("hi")], true)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("a system message must come first"),
        "{error}"
    );

    let bad_call = ChatTemplate::new("{{ messages | no_such_filter }}", "", "");
    let error = match bad_call {
        Ok(template) => template.render(&[], true).unwrap_err(),
        Err(error) => error,
    };
    assert!(
        matches!(error, InferenceError::InvalidRequest(_)),
        "{error:?}"
    );
}
