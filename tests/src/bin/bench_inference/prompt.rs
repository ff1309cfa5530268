//! The prompt both engines prefill: a fixed English request rendered with
//! the GGUF's own chat template and tokenized by aios' GGUF tokenizer (whose
//! ids match llama.cpp's: inference/tests/tokenizer.rs), cut at a word so
//! that it is as close to `--prompt-tokens` as a whole word allows.

use std::path::Path;

use aios_inference::text::{ChatMessage, ChatTemplate, Tokenizer};
use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file;

/// What the user asks; the article follows.
const REQUEST: &str =
    "Summarize the following article in three short bullet points, then suggest a title for it.";

/// The article, cut (or repeated) to length. Plain prose, numbers and
/// punctuation: what a summarization request carries.
const ARTICLE: &str = "\
When the city of Rotterdam opened its first water square in 2013, most residents \
saw a sunken basketball court with unusually wide steps. On a dry afternoon that is \
exactly what it is: teenagers play, parents sit on the concrete terraces, and a \
café puts out tables along the edge. During a heavy storm, however, the square \
fills with rainwater collected from the surrounding roofs and streets, holding up \
to 1,700 cubic metres until the sewers can cope with it again. The idea is simple, \
but it marks a shift in how engineers think about floods. For most of the twentieth \
century, the goal was to move water away as quickly as possible, through larger \
pipes, deeper canals and higher dikes. Planners now talk about giving water room: \
parks that double as reservoirs, roofs planted with sedum that soak up a summer \
downpour, and car parks built over tanks that release their contents slowly. \
Copenhagen adopted a similar plan after a cloudburst in July 2011 dumped more than \
130 millimetres of rain on the city in under two hours, flooding basements and \
causing damage estimated at over 800 million euros. Its response combines green \
streets that channel water towards the harbour with tunnels for the rare events \
that no park can absorb. Critics point out that such projects are slow to build and \
hard to maintain, and that a square which floods twice a year still needs someone \
to clear the leaves from its drains. Supporters answer that the alternative, \
ever bigger pipes under ever denser streets, has reached its limits, and that \
public spaces which work in both weathers are easier to pay for than tunnels that \
sit empty most of the year. What both sides agree on is that the next decades will \
bring more intense rain to northern Europe, and that cities will have to decide \
soon which of these approaches they trust.";

/// The prompt's token ids, and how they were made.
#[derive(Debug)]
pub(crate) struct Prompt {
    pub ids: Vec<u32>,
    /// Words of the article it holds.
    pub words: usize,
}

/// A prompt of at most `tokens` tokens (and at most a word's tokens fewer).
pub(crate) fn build(model: &Path, tokens: usize) -> Result<Prompt> {
    let mut file =
        std::fs::File::open(model).with_context(|| format!("opening {}", model.display()))?;
    let content = gguf_file::Content::read(&mut file)
        .with_context(|| format!("reading the GGUF header of {}", model.display()))?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let template = ChatTemplate::from_gguf(&content, &tokenizer)?;
    let words: Vec<&str> = ARTICLE.split_whitespace().collect();
    let render = |n: usize| -> Result<Vec<u32>> {
        // Every word is at least one token, so `tokens` words always overshoot.
        let article: Vec<&str> = words.iter().cycle().take(n).copied().collect();
        let user = format!("{REQUEST}\n\n{}", article.join(" "));
        let text = template.render(&[ChatMessage::user(user)], true)?;
        // As the data plane encodes a chat prompt: no BOS of our own, the
        // template's control tokens parsed.
        Ok(tokenizer.encode(&text, false, true))
    };
    let empty = render(0)?.len();
    if empty > tokens {
        bail!("--prompt-tokens {tokens}: the template and request alone take {empty} tokens");
    }
    // The largest word count that fits (token count grows with words).
    let (mut fits, mut over) = (0, tokens + 1);
    while over - fits > 1 {
        let middle = (fits + over) / 2;
        match render(middle)?.len() <= tokens {
            true => fits = middle,
            false => over = middle,
        }
    }
    Ok(Prompt {
        ids: render(fits)?,
        words: fits,
    })
}
