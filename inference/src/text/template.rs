//! The chat template: turning messages into the prompt text a model was
//! trained on, with the Jinja template the GGUF file carries.

use candle_core::quantized::gguf_file::Content;
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use super::Tokenizer;
use super::meta::Meta;
use crate::InferenceError;

/// ChatML, for models whose GGUF has no `tokenizer.chat_template`; the same
/// text llama.cpp's built-in `chatml` format writes.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may know others).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template.
///
/// Rendered as Hugging Face's `apply_chat_template` renders it: Jinja with
/// `trim_blocks` and `lstrip_blocks`, Python string methods (`.strip()`,
/// `.startswith()`: minijinja-contrib's pycompat), `raise_exception(msg)`,
/// and the variables `messages`, `add_generation_prompt`, `bos_token` and
/// `eos_token`.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The template in `tokenizer.chat_template`, or [`CHATML_TEMPLATE`]
    /// when the file has none; `bos_token` and `eos_token` are the
    /// tokenizer's. Fails if the template does not compile.
    pub fn from_gguf(content: &Content, tokenizer: &Tokenizer) -> Result<Self, InferenceError> {
        let meta = Meta::new(content);
        let source = meta
            .string("tokenizer.chat_template")?
            .unwrap_or(CHATML_TEMPLATE);
        let token = |id: Option<u32>| {
            id.map(|id| String::from_utf8_lossy(tokenizer.token_bytes(id)).into_owned())
                .unwrap_or_default()
        };
        Self::build(source, token(tokenizer.bos()), token(tokenizer.eos()))
            .map_err(|reason| meta.error("tokenizer.chat_template", reason))
    }

    /// A template from its Jinja source. Fails with
    /// [`InferenceError::InvalidRequest`] if it does not compile.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, InferenceError> {
        Self::build(source, bos_token.to_owned(), eos_token.to_owned())
            .map_err(|reason| InferenceError::InvalidRequest(format!("chat template: {reason}")))
    }

    fn build(source: &str, bos_token: String, eos_token: String) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| describe(&e))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// The prompt for `messages`; with `add_generation_prompt`, ending where
    /// the assistant's reply starts. Fails with
    /// [`InferenceError::InvalidRequest`] when the template rejects the
    /// conversation (`raise_exception`) or fails while rendering.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, InferenceError> {
        let template = self.env.get_template(NAME).map_err(|e| {
            InferenceError::InvalidRequest(format!("chat template: {}", describe(&e)))
        })?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| InferenceError::InvalidRequest(format!("chat template: {}", describe(&e))))
    }
}

/// minijinja's message with its detail and line, without the source dump
/// its `Debug` adds.
fn describe(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
