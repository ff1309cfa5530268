#!/usr/bin/env python3
"""Reference token ids and chat prompts for aios' GGUF tokenizer, from llama.cpp.

Writes, under inference/tests/fixtures/tokenizer/:

  llama_cpp_ids.json  every fixture string with llama.cpp's ids, for each
                      add_bos (llama.cpp's add_special) and parse_special flag;
                      plus the vocabulary facts the tests check (BOS, EOS, EOT,
                      end-of-generation ids, add_bos).
  chat_prompt.json    the conversation the generation tests use, rendered by
                      the GGUF's chat template with jinja2, and its ids.
  templates.json      more conversations rendered by jinja2, for the template test.

Run it with the venv from scripts/llama-cpp-venv.sh (llama-cpp-python built from
source, jinja2):

  scripts/llama-cpp-venv.sh
  target/llama-cpp-venv/bin/python scripts/reference/tokenizer_ids.py [MODEL.gguf]

MODEL defaults to smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf in
$AIOS_MODELS_DIR (else ~/.cache/aios/models), where scripts/models.sh puts it.
"""

import json
import os
import sys
from pathlib import Path

import jinja2
import jinja2.sandbox
import llama_cpp

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "inference" / "tests" / "fixtures" / "tokenizer"
MODEL = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

# What the tokenizer must get right: digits, emoji, CJK and other scripts,
# spaces, newlines and tabs, punctuation and contractions, special tokens
# written in text, code. Each string is tokenized with every flag combination.
STRINGS = [
    "",
    "Hello, world!",
    " ",
    "   three leading spaces",
    "trailing spaces   ",
    "multiple    spaces   inside  words",
    "\n",
    "line one\nline two\n\n\nline five\n",
    "\ttabbed\tcolumns\t\n\t\tindented twice",
    "\r\nwindows\r\nline endings\r\n",
    " \n \t mixed \n\n  whitespace  \t",
    "1234567890",
    "3.14159265358979323846",
    "The year 2024 had 366 days; 1,000,000 people paid $19.99 each.",
    "00042 and 9999999999999999999999",
    "don't",
    "I'LL",
    "we're they've she'd I'm it's you'll",
    "DON'T SHOUT, WE'RE HERE",
    "rock 'n' roll, 'tis the season'",
    "Wait... what?!  (really)",
    "foo(bar) = {baz: [1, 2]}; // done",
    "email@example.com https://example.org/path?q=1&r=2#frag",
    "I love 🦀 and 👍🏽!",
    "👨‍👩‍👧‍👦 family emoji",
    "🙂🙃😀",
    "日本語のテキスト",
    "中文测试：你好，世界！",
    "한국어 문장입니다",
    "Ελληνικά κείμενο",
    "Привет, мир",
    "مرحبا بالعالم",
    "हिन्दी पाठ",
    "café naïve résumé Ångström",
    "e\u0301 combining accent",
    "٣٤٥ Arabic-Indic digits and Ⅻ",
    "non\u00a0breaking\u2003em space\u3000ideographic",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "text <|im_end|> more",
    "<|im_start|<|im_end|>>",
    "<jupyter_code>print(1)<jupyter_output>1",
    "fn main() {\n    println!(\"hi\");\n}\n",
    "def f(x):\n\treturn x ** 2  # square",
    (
        "Large language models are trained on text split into tokens. A tokenizer "
        "maps text to token ids and back: byte-level BPE starts from the 256 bytes "
        "and merges the most frequent pairs, so any string can be encoded, even "
        "emoji (🤖), accents (déjà vu), or CJK (東京). Numbers like 3.14159 and "
        "2,718,281 are split digit by digit by SmolLM2's pre-tokenizer.\n\n"
        "    Indented code:\n    for i in range(10):\n        print(i)\n"
    ),
]

SYSTEM = "You are a helpful assistant."
QUESTION = "What is the capital of France? Answer in one short sentence."

# Conversations for templates.json: (messages, add_generation_prompt).
CONVERSATIONS = [
    ([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}], True),
    # No system message: SmolLM2's template adds its default one.
    ([{"role": "user", "content": "Hi!"}], True),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "  And 3+3?\n"},
        ],
        False,
    ),
    ([], True),
]


def render(template, messages, add_generation_prompt, bos_token, eos_token):
    # As transformers' apply_chat_template renders chat templates.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )


def main():
    models = Path(os.environ.get("AIOS_MODELS_DIR") or Path.home() / ".cache" / "aios" / "models")
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else models / MODEL
    if not model.exists():
        sys.exit(f"{model} not found: run scripts/models.sh")
    llm = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def tokenize(text, add_bos, special):
        return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def token_text(token):
        return llm.detokenize([token], special=True).decode("utf-8") if token >= 0 else ""

    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    facts = {
        "n_vocab": n_vocab,
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eos": llama_cpp.llama_vocab_eos(vocab),
        "eot": llama_cpp.llama_vocab_eot(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "eog": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
    }
    cases = []
    for text in STRINGS:
        for add_bos in (False, True):
            for special in (False, True):
                cases.append(
                    {"text": text, "add_bos": add_bos, "special": special, "ids": tokenize(text, add_bos, special)}
                )

    template = llm.metadata["tokenizer.chat_template"]
    bos_token, eos_token = token_text(facts["bos"]), token_text(facts["eos"])
    rendered = [
        {
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "text": render(template, messages, add_generation_prompt, bos_token, eos_token),
        }
        for messages, add_generation_prompt in CONVERSATIONS
    ]
    chat = dict(rendered[0])
    chat["add_bos"] = True
    chat["special"] = True
    chat["ids"] = tokenize(chat["text"], True, True)
    cases.append({"text": chat["text"], "add_bos": True, "special": True, "ids": chat["ids"]})

    producer = (
        f"scripts/reference/tokenizer_ids.py: llama-cpp-python {llama_cpp.__version__}, "
        f"jinja2 {jinja2.__version__}, model {model.name}"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    write(OUT / "llama_cpp_ids.json", {"producer": producer, "model": model.name, "vocab": facts, "cases": cases})
    write(OUT / "chat_prompt.json", {"producer": producer, **chat})
    write(
        OUT / "templates.json",
        {"producer": producer, "bos_token": bos_token, "eos_token": eos_token, "cases": rendered},
    )


def write(path, value):
    # One case per line: reviewable diffs, still plain JSON.
    if "cases" in value:
        head = {k: v for k, v in value.items() if k != "cases"}
        lines = [json.dumps(case, ensure_ascii=False) for case in value["cases"]]
        text = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
        text += ',\n "cases": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
    else:
        text = json.dumps(value, ensure_ascii=False, indent=1) + "\n"
    json.loads(text)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
