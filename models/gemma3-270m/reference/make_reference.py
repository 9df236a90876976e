#!/usr/bin/env python3
"""llama.cpp reference data for Gemma 3 270M (`ember fetch gemma3-270m`, a base model: no chat).

    python3 make_reference.py --gguf /path/to/gemma-3-270m-q4_k_m.gguf

Needs `pip install xllamacpp gguf numpy`. Writes beside this script:

- tokenizer_ids.json: llama.cpp's ids for some strings (POST /tokenize, parse_special, no BOS),
  the Q4_K_M file as it is (the tokenizer does not depend on the weights).
- continuations_exact.json: llama.cpp's greedy continuations (32 tokens at most) of a few raw
  prompts, BOS first as the file asks, computed on a lossless F32 copy of the file
  (models/gguf_to_f32.py) with an F32 KV cache: exact f32 arithmetic on the same weights, which
  is what Ember's f32 reference computes. Records the GGUF's sha256, and for each step the gap
  between llama.cpp's two best log-probabilities.
"""
import argparse, hashlib, json, os, subprocess, sys, tempfile, urllib.request

import xllamacpp as xlc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
MAX_TOKENS = 32
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "A serial port sends data",
]
TOKENIZER_CASES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces",
    "trailing spaces   ",
    " ",
    "a  b\n\n\tc   ",
    "line one\nline two\r\n\tindented\n    four spaces\n",
    "naïve café, Zürich, 東京, Москва 🔥🚀",
    "3.14159 + 2,718 = 5.86",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text with <b>html</b> and <start_of_turn",
    "def f(x):\n    return x ** 2  # square\n",
    "\u00a0non-breaking\u2009spaces\u3000and\ufeffBOM",
]


class Llama:
    def __init__(self, path, f32_cache):
        p = xlc.CommonParams()
        p.model.path = path
        p.n_ctx = 512
        p.n_parallel = 1
        p.n_gpu_layers = 0
        p.cpuparams.n_threads = 2
        p.cpuparams_batch.n_threads = 2
        p.sampling.temp = 0.0
        p.sampling.top_k = 1
        if f32_cache:
            p.cache_type_k = xlc.ggml_type.GGML_TYPE_F32
            p.cache_type_v = xlc.ggml_type.GGML_TYPE_F32
        self.server = xlc.Server(p)
        self.base = self.server.listening_address

    def post(self, path, obj):
        req = urllib.request.Request(self.base + path, data=json.dumps(obj).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    def tokenize(self, text, bos):
        return self.post("/tokenize", {"content": text, "add_special": bos,
                                       "parse_special": True})["tokens"]

    def detokenize(self, ids):
        return self.post("/detokenize", {"tokens": ids})["content"]

    def greedy(self, prompt_ids):
        r = self.post("/completion", {
            "prompt": prompt_ids, "n_predict": MAX_TOKENS, "temperature": 0.0, "top_k": 1,
            "repeat_penalty": 1.0, "return_tokens": True, "cache_prompt": False, "n_probs": 2,
            "post_sampling_probs": False})
        gaps = [s["top_logprobs"][0]["logprob"] - s["top_logprobs"][1]["logprob"]
                for s in r["completion_probabilities"]]
        return [int(t) for t in r["tokens"]], r["stop_type"], gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    args = ap.parse_args()
    sha = hashlib.sha256(open(args.gguf, "rb").read()).hexdigest()
    source = ("llama.cpp via xllamacpp %s, CPU, 2 threads, n_ctx 512; POST /tokenize (parse_special); "
              "greedy (temperature 0, top_k 1, no penalties) through POST /completion with the prompt "
              "as token ids, return_tokens and n_probs 2" % xlc.__version__)

    llama = Llama(args.gguf, False)
    cases = [{"text": t, "ids": llama.tokenize(t, False)} for t in TOKENIZER_CASES]
    for case in cases:
        case["round_trip"] = llama.detokenize(case["ids"]) == case["text"]
    with open(os.path.join(HERE, "tokenizer_ids.json"), "w") as f:
        json.dump({"source": source, "gguf_sha256": sha, "cases": cases}, f, indent=1, ensure_ascii=False)
    del llama

    f32 = os.path.join(tempfile.mkdtemp(), "gemma-f32.gguf")
    subprocess.run([sys.executable, os.path.join(ROOT, "models", "gguf_to_f32.py"), args.gguf, f32],
                   check=True)
    llama = Llama(f32, True)
    out = []
    for prompt in PROMPTS:
        prompt_ids = llama.tokenize(prompt, True)
        ids, stop, gaps = llama.greedy(prompt_ids)
        if stop == "eos" and ids:
            ids, gaps = ids[:-1], gaps[:-1]
        out.append({"prompt": prompt, "prompt_ids": prompt_ids, "reply_ids": ids,
                    "reply_text": llama.detokenize(ids), "stop_type": stop, "top2_gaps": gaps})
        print(repr(prompt), "->", repr(out[-1]["reply_text"]), stop, "min gap",
              min(gaps) if gaps else None, file=sys.stderr)
    os.remove(f32)
    with open(os.path.join(HERE, "continuations_exact.json"), "w") as f:
        json.dump({"source": "EXACT: a lossless F32 copy (models/gguf_to_f32.py), F32 KV cache. " + source,
                   "gguf_sha256": sha, "max_tokens": MAX_TOKENS, "cases": out}, f, indent=1,
                  ensure_ascii=False)


if __name__ == "__main__":
    main()
