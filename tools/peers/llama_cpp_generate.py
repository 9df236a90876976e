#!/usr/bin/env python3
"""Run llama.cpp (the `xllamacpp` wheel) on a GGUF with the same chat prompt and greedy settings
as `ember generate --chat`, and print its timings as JSON — the peer for README numbers.

    pip install xllamacpp
    python3 tools/peers/llama_cpp_generate.py --model M.gguf --prompt TEXT [--max-tokens N] [--threads N]

Prints one JSON object: tokens, text, prompt_tokens, load_seconds, prefill and decode tok/s as
llama.cpp's server reports them (`timings`).
"""
import argparse, json, time, urllib.request

import xllamacpp as xlc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    p = xlc.CommonParams()
    p.model.path = a.model
    p.n_ctx = 2048
    p.n_parallel = 1
    p.n_gpu_layers = 0
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    start = time.perf_counter()
    server = xlc.Server(p)
    load = time.perf_counter() - start

    def post(path, obj):
        req = urllib.request.Request(server.listening_address + path, data=json.dumps(obj).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    rendered = post("/apply-template", {"messages": [{"role": "user", "content": a.prompt}]})["prompt"]
    ids = post("/tokenize", {"content": rendered, "add_special": False, "parse_special": True})["tokens"]
    r = post("/completion", {"prompt": ids, "n_predict": a.max_tokens, "temperature": 0.0, "top_k": 1,
                             "repeat_penalty": 1.0, "return_tokens": True, "cache_prompt": False})
    t = r["timings"]
    print(json.dumps({"engine": "llama.cpp (xllamacpp %s)" % xlc.__version__, "tokens": r["tokens"],
                      "text": r["content"], "prompt_tokens": len(ids), "load_seconds": load,
                      "prefill_tokens_per_second": t["prompt_per_second"],
                      "decode_tokens_per_second": t["predicted_per_second"]}))


if __name__ == "__main__":
    main()
