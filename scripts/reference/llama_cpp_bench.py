#!/usr/bin/env python3
"""llama.cpp's side of bench-inference: load, prefill and greedy decode timings
for a GGUF on the CPU, through llama-cpp-python's low-level API (the C calls,
so Python adds only a few microseconds per step).

bench-inference (tests/src/bin/bench_inference) runs this once per measured
run, alternating with its own runs, and reads the JSON object it prints as its
last stdout line. It can also be run by hand:

  scripts/llama-cpp-venv.sh
  echo '{"prompt": [1, 2, 3]}' | OMP_WAIT_POLICY=passive \\
    target/llama-cpp-venv/bin/python scripts/reference/llama_cpp_bench.py \\
    --model MODEL.gguf --threads 2 --decode-tokens 128 [--concurrency 1,4,8] [--verbose]

stdin: {"prompt": [token ids]}, the prompt already templated and tokenized
(by bench-inference, with aios' tokenizer, whose ids match llama.cpp's), so
both engines prefill the same tokens.

What is timed, to match bench-inference's own rows:

- load: llama_model_load_from_file with the default load mode (mmap: the
  weights stay in the page cache's pages) and, as a second figure, with
  LLAMA_LOAD_MODE_NONE (read into memory, like aios). The context (KV cache,
  compute buffers) is timed apart.
- prefill: one llama_decode of the whole prompt (n_batch = n_ubatch >= its
  length), logits of the last token only.
- decode: per token, llama_decode of one token, then the argmax of its logits
  (numpy). EOS is not looked for: exactly --decode-tokens tokens.
- with --concurrency: for each N, a context with N sequences; each prefilled
  apart (untimed), then decode steps of one token per sequence in one
  llama_decode, argmax for each; aggregate tokens/s over those steps.

Before timing, one token goes through the context and is cleared, so the
OpenMP threads exist and the weights' pages are mapped, as bench-inference
warms its own side.

CPU extra buffer types (weight repacking, AMX) are off
(use_extra_bufts = False): that path crashed in one of our VMs, see
scripts/llama-cpp-venv.sh. Set OMP_WAIT_POLICY in the environment (this
script does not): bench-inference sets it to passive, see BENCHMARKS.md.
"""

import argparse
import json
import os
import sys
import time

import llama_cpp
import llama_cpp._logger
import llama_cpp.llama_cpp as ll
import numpy as np


def model_params(load_mode):
    params = ll.llama_model_default_params()
    params.use_extra_bufts = False
    params.n_gpu_layers = 0
    if load_mode is not None:
        params.load_mode = load_mode
    return params


def load(path, load_mode=None):
    started = time.perf_counter()
    model = ll.llama_model_load_from_file(path.encode(), model_params(load_mode))
    took = time.perf_counter() - started
    if not model:
        sys.exit(f"llama.cpp could not load {path}")
    return model, took


def context(model, threads, n_ctx, n_batch, sequences):
    params = ll.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = sequences
    params.n_threads = threads
    params.n_threads_batch = threads
    params.no_perf = False
    started = time.perf_counter()
    ctx = ll.llama_init_from_model(model, params)
    took = time.perf_counter() - started
    if not ctx:
        sys.exit("llama.cpp could not create a context")
    return ctx, took


def decode(ctx, batch):
    rc = ll.llama_decode(ctx, batch)
    if rc != 0:
        sys.exit(f"llama_decode returned {rc}")


def cpu():
    """CPU seconds of this process, every thread (OpenMP's included)."""
    times = os.times()
    return times.user + times.system


def tokens(ids):
    return (ll.llama_token * len(ids))(*ids)


def argmax(ctx, i, vocab):
    logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, i), shape=(vocab,))
    return int(logits.argmax())


def warm_up(ctx, token):
    """One token through the context, then cleared."""
    ids = tokens([token])  # the batch points into it: keep it alive
    decode(ctx, ll.llama_batch_get_one(ids, 1))
    # llama.cpp adds a decode's time to its counters when it synchronizes.
    ll.llama_synchronize(ctx)
    ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
    ll.llama_perf_context_reset(ctx)


def single(model, load_s, args, prompt, vocab):
    """Load (already timed), prefill, decode at one sequence."""
    n_batch = max(512, len(prompt))
    ctx, context_s = context(model, args.threads, len(prompt) + args.decode_tokens + 8, n_batch, 1)
    warm_up(ctx, prompt[0])

    ids = tokens(prompt)  # the batch points into it: keep it alive
    cpu0, started = cpu(), time.perf_counter()
    decode(ctx, ll.llama_batch_get_one(ids, len(prompt)))
    nxt = argmax(ctx, -1, vocab)
    prefill_s = time.perf_counter() - started
    prefill_cpu_s = cpu() - cpu0

    generated = [nxt]
    one = (ll.llama_token * 1)()
    cpu0, started = cpu(), time.perf_counter()
    for _ in range(args.decode_tokens):
        one[0] = nxt
        decode(ctx, ll.llama_batch_get_one(one, 1))
        nxt = argmax(ctx, -1, vocab)
        generated.append(nxt)
    decode_s = time.perf_counter() - started
    decode_cpu_s = cpu() - cpu0

    perf = ll.llama_perf_context(ctx)
    ll.llama_free(ctx)
    return {
        "load_s": load_s,
        "context_s": context_s,
        "prefill_s": prefill_s,
        "prefill_tokens": len(prompt),
        "prefill_cpu_s": prefill_cpu_s,
        "decode_s": decode_s,
        "decode_tokens": args.decode_tokens,
        "decode_cpu_s": decode_cpu_s,
        # llama.cpp's own timers (llama_perf_context): inside llama_decode only.
        "perf": {
            "prompt_eval_ms": perf.t_p_eval_ms,
            "prompt_eval_tokens": perf.n_p_eval,
            "eval_ms": perf.t_eval_ms,
            "eval_tokens": perf.n_eval,
        },
        # The first token is the prefill's; then one per decode step.
        "generated": generated,
    }


def batched(model, args, prompt, vocab, sequences):
    """Aggregate decode tokens/s with `sequences` sequences decoding together."""
    # Each sequence gets n_ctx / n_seq_max positions; llama.cpp pads n_ctx to
    # 256, so a multiple of 256 per sequence divides evenly.
    per_seq = -(-(len(prompt) + args.decode_tokens + 8) // 256) * 256
    n_batch = max(512, len(prompt), sequences)
    ctx, _ = context(model, args.threads, per_seq * sequences, n_batch, sequences)
    warm_up(ctx, prompt[0])
    batch = ll.llama_batch_init(n_batch, 0, sequences)

    def fill(entries):
        """entries: (token, position, sequence, wants logits)."""
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if logits else 0
        batch.n_tokens = len(entries)

    nxt = []
    for seq in range(sequences):
        last = len(prompt) - 1
        fill([(t, p, seq, p == last) for p, t in enumerate(prompt)])
        decode(ctx, batch)
        nxt.append(argmax(ctx, -1, vocab))

    cpu0, started = cpu(), time.perf_counter()
    for step in range(args.decode_tokens):
        pos = len(prompt) + step
        fill([(nxt[seq], pos, seq, True) for seq in range(sequences)])
        decode(ctx, batch)
        nxt = [argmax(ctx, seq, vocab) for seq in range(sequences)]
    decode_s = time.perf_counter() - started
    cpu_s = cpu() - cpu0

    ll.llama_batch_free(batch)
    ll.llama_free(ctx)
    return {
        "sequences": sequences,
        "decode_s": decode_s,
        "tokens": sequences * args.decode_tokens,
        "cpu_s": cpu_s,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument(
        "--concurrency", default="", help="e.g. 1,4,8: batched decode instead of the single-sequence run"
    )
    parser.add_argument("--verbose", action="store_true", help="llama.cpp's log on stderr (default: errors only)")
    args = parser.parse_args()
    prompt = json.load(sys.stdin)["prompt"]
    if not prompt:
        sys.exit("the prompt is empty")

    llama_cpp._logger.set_verbose(args.verbose)
    ll.llama_backend_init()
    out = {
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": ll.llama_print_system_info().decode().strip(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "threads": args.threads,
        "extra_buffer_types": False,
    }
    if args.concurrency:
        model, _ = load(args.model)
        vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
        levels = [int(n) for n in args.concurrency.split(",")]
        out["batched"] = [batched(model, args, prompt, vocab, n) for n in levels]
    else:
        # Read into memory first (the figure comparable to aios' load), then
        # the default mmap load that the run uses.
        unmapped, load_read_s = load(args.model, ll.LLAMA_LOAD_MODE_NONE)
        ll.llama_model_free(unmapped)
        model, load_s = load(args.model)
        vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
        out["single"] = single(model, load_s, args, prompt, vocab)
        out["single"]["load_read_s"] = load_read_s
    ll.llama_model_free(model)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
