"""Calls an aios data plane's OpenAI-compatible HTTP API with the official
`openai` Python package, as an existing application would, and prints one
JSON report: the chat answer (plain and streamed), embedding checks, the
listed models, and what a wrong key gets.

Used by tests/tests/local_inference.rs; runs in scripts/test.sh's venv.
"""

import argparse
import json
import math
import sys

import openai


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--embedding-model", required=True)
    parser.add_argument("--question", required=True)
    args = parser.parse_args()

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": args.question}]
    report = {}

    chat = client.chat.completions.create(model=args.agent, messages=messages, temperature=0)
    report["chat"] = chat.choices[0].message.content
    report["chat_model"] = chat.model
    report["usage"] = chat.usage.total_tokens if chat.usage else None

    # A different seed, so the exact cache does not answer the stream.
    chunks = []
    stream = client.chat.completions.create(
        model=args.agent,
        messages=[{"role": "user", "content": args.question + " "}],
        stream=True,
        seed=7,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks.append(chunk.choices[0].delta.content)
    report["stream"] = "".join(chunks)
    report["stream_chunks"] = len(chunks)

    embedded = client.embeddings.create(
        model=args.embedding_model,
        input=["The cat sits on the mat.", "A cat is sitting on a mat."],
    )
    vectors = [d.embedding for d in embedded.data]
    report["embedding_dims"] = len(vectors[0])
    report["similar"] = cosine(vectors[0], vectors[1])
    # The SDK's default encoding is base64; ask for floats too.
    floats = client.embeddings.create(
        model=args.embedding_model, input="The cat sits on the mat.", encoding_format="float"
    )
    report["float_matches"] = cosine(floats.data[0].embedding, vectors[0]) > 0.9999

    report["models"] = [m.id for m in client.models.list().data]

    bad = openai.OpenAI(base_url=args.base_url, api_key="wrong", max_retries=0)
    try:
        bad.chat.completions.create(model=args.agent, messages=messages)
        report["bad_key_status"] = 200
    except openai.APIStatusError as e:
        report["bad_key_status"] = e.status_code

    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
