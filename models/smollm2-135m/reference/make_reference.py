#!/usr/bin/env python3
"""Generate llama.cpp reference fixtures for SmolLM2-135M-Instruct (GGUF).

Usage:
    python make_reference.py --gguf /path/to/SmolLM2-135M-Instruct.Q4_1.gguf [--out DIR] [--threads 2]

Requires: xllamacpp (Python bindings for llama.cpp; tested with 2026.10.11549), numpy.
Writes tokenizer_ids.json, chat_replies.json, teacher_forced.json into --out
(default: the directory containing this script).

All numbers come from llama.cpp itself, via xllamacpp.Server (llama.cpp's
server, embedded in-process, CPU only):
  * tokenize / detokenize / apply-template: the embedded server's HTTP
    endpoints POST /tokenize, /detokenize, /apply-template on
    Server.listening_address (127.0.0.1, random port).
  * generation / probabilities: Server.handle_chat_completions(...) and
    Server.handle_completions(...) (OpenAI-compatible handlers called directly).
"""
import argparse
import hashlib
import json
import math
import os
import sys
import urllib.request

import xllamacpp as xlc

CHAT_PROMPTS = [
    "What is the capital of France? Answer in one sentence, then give one fun fact about it.",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Name three primary colors.",
    "Translate 'good morning' into Spanish.",
    "Explain what a serial port is in two sentences.",
]
MAX_TOKENS = 64
SEED = 42
EOS_ID = 2

TOKENIZER_CASES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces",
    "trailing spaces   ",
    " ",
    "",
    "a  b\n\n\tc   ",
    "line one\nline two\r\n\tindented\n    four spaces\n",
    "fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n",
    "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n\nif __name__ == '__main__':\n\tprint(add(1, 2))\n",
    "12345 3.14159 2026-11-28",
    "1234567890123456789 0.000001 -42 +7 1e10 0x1F",
    "你好，世界！今天天气很好。",
    "日本語のテキストです。カタカナとひらがな、漢字。",
    "I love 🦀 and 🐍! 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵",
    "Café naïve résumé façade Ångström Zürich São Paulo crème brûlée",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nBe brief.<|im_end|><|im_start|>assistant\nOK<|endoftext|>",
    "I'm don't we'll they've she'd it's y'all",
    "Wait... what?!? Yes!!! (really) [no] {maybe} -- ok; fine: done...",
    "!@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"key\": [1, 2.5, null, true]}",
    "Привет мир! Γειά σου κόσμε! مرحبا بالعالم",
    "<|im_start|><|im_end|><|endoftext|>",
    "not special: <|im_start and im_end|> <| |>",
    # filled in at runtime: the France prompt rendered with the GGUF chat template
]


class Ref:
    def __init__(self, gguf_path, threads, f32_cache=False):
        p = xlc.CommonParams()
        p.model.path = gguf_path
        p.n_ctx = 2048
        p.n_batch = 2048
        p.n_ubatch = 512
        p.n_parallel = 1
        p.n_gpu_layers = 0
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.sampling.seed = SEED
        p.sampling.temp = 0.0
        p.sampling.top_k = 1
        p.sampling.penalty_repeat = 1.0
        p.sampling.penalty_freq = 0.0
        p.sampling.penalty_present = 0.0
        p.sampling.dry_multiplier = 0.0
        p.warmup = True
        if f32_cache:
            p.cache_type_k = xlc.ggml_type.GGML_TYPE_F32
            p.cache_type_v = xlc.ggml_type.GGML_TYPE_F32
        self.server = xlc.Server(p)
        self.base = self.server.listening_address

    def post(self, path, obj):
        req = urllib.request.Request(
            self.base + path, data=json.dumps(obj).encode("utf-8"),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    def tokenize(self, text):
        r = self.post("/tokenize", {"content": text, "add_special": False,
                                    "parse_special": True})
        return [int(t) for t in r["tokens"]]

    def detokenize(self, ids):
        return self.post("/detokenize", {"tokens": ids})["content"]

    def render_chat(self, user):
        return self.post("/apply-template",
                         {"messages": [{"role": "user", "content": user}]})["prompt"]


GREEDY = {
    "temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0,
    "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
    "dry_multiplier": 0.0, "seed": SEED, "cache_prompt": True,
    "post_sampling_probs": False, "stream": False,
}


def top_list(entry):
    """[[id, logprob], ...] from an OpenAI-style logprobs entry (pre-sampling)."""
    return [[int(t["id"]), float(t["logprob"])] for t in entry["top_logprobs"]]


def make_tokenizer(ref, france_rendered):
    cases = []
    for text in TOKENIZER_CASES + [france_rendered]:
        ids = ref.tokenize(text)
        back = ref.detokenize(ids)
        cases.append({"text": text, "ids": ids, "roundtrip": back == text})
        if back != text:
            cases[-1]["detokenized"] = back
    return {
        "source": ("llama.cpp tokenizer via xllamacpp %s embedded server: POST /tokenize "
                   "{add_special:false, parse_special:true} (special tokens parsed, no BOS); "
                   "roundtrip = (POST /detokenize of ids == text)" % xlc.__version__),
        "cases": cases,
    }


def make_chat(ref):
    out = []
    for prompt in CHAT_PROMPTS:
        rendered = ref.render_chat(prompt)
        prompt_ids = ref.tokenize(rendered)
        req = dict(GREEDY)
        req.update({"messages": [{"role": "user", "content": prompt}],
                    "max_tokens": MAX_TOKENS, "n_predict": MAX_TOKENS,
                    "logprobs": True, "top_logprobs": 5})
        r = ref.server.handle_chat_completions(req)
        ch = r["choices"][0]
        steps = ch["logprobs"]["content"]
        gen_ids = [int(s["id"]) for s in steps]
        top5 = [top_list(s) for s in steps]
        assert r["usage"]["prompt_tokens"] == len(prompt_ids), (r["usage"], len(prompt_ids))
        fr = ch["finish_reason"]
        # strip a trailing eos if the server reported it as a step
        if gen_ids and gen_ids[-1] == EOS_ID:
            reply_ids = gen_ids[:-1]
        else:
            reply_ids = gen_ids
        finish = "eos" if fr == "stop" else "length"
        if finish == "length":
            assert len(reply_ids) == MAX_TOKENS, len(reply_ids)
        # Cross-check: the plain completion handler fed the token ids directly
        # must produce the identical greedy continuation.
        req2 = dict(GREEDY)
        req2.update({"prompt": prompt_ids, "max_tokens": MAX_TOKENS,
                     "n_predict": MAX_TOKENS, "n_probs": 5})
        r2 = ref.server.handle_completions(req2)
        steps2 = r2["choices"][0]["logprobs"]["content"]
        ids2 = [int(s["id"]) for s in steps2]
        ids2_noeos = ids2[:-1] if ids2 and ids2[-1] == EOS_ID else ids2
        reply_text = ref.detokenize(reply_ids)
        case = {
            "prompt": prompt,
            "rendered_prompt": rendered,
            "prompt_ids": prompt_ids,
            "reply_ids": reply_ids,
            "reply_text": reply_text,
            "finish": finish,
            "top5": top5,
            "completion_crosscheck_equal": ids2_noeos == reply_ids,
        }
        if ch["message"].get("content") != reply_text:
            case["chat_message_content"] = ch["message"].get("content")
        # min gap between top-1 and top-2 logprob over the steps
        gaps = [(i, s[0][1] - s[1][1]) for i, s in enumerate(top5) if len(s) > 1]
        case["min_top1_top2_gap"] = min(gaps, key=lambda g: g[1]) if gaps else None
        for i, (tid, s) in enumerate(zip(gen_ids, top5)):
            assert s[0][0] == tid, ("greedy token != top-1", prompt, i, tid, s)
        out.append(case)
        print("chat:", repr(prompt), "->", repr(reply_text), finish, len(reply_ids),
              "min gap", case["min_top1_top2_gap"], file=sys.stderr)
    return {
        "source": ("llama.cpp via xllamacpp %s: Server.handle_chat_completions(messages=[user], "
                   "temperature=0, top_k=1, repeat_penalty=1, seed=%d, max_tokens=%d, logprobs=true, "
                   "top_logprobs=5); GGUF chat template with its default system prompt; CPU, n_ctx=2048"
                   % (xlc.__version__, SEED, MAX_TOKENS)),
        "max_tokens": MAX_TOKENS,
        "eos_id": EOS_ID,
        "top5_kind": ("natural-log probabilities, pre-sampling (softmax over the full raw logits; "
                      "post_sampling_probs=false). top5[k] is for generated step k; when finish=='eos' "
                      "there is one extra final entry for the step that produced eos, so "
                      "len(top5) == len(reply_ids) + 1"),
        "cases": out,
    }


PARAGRAPH = (
    "Lighthouses have guided sailors along dangerous coasts for more than two thousand years. "
    "The most famous early example was the Pharos of Alexandria, a towering stone structure "
    "that burned a fire at its summit so ships could find the harbor at night. Modern "
    "lighthouses rely on powerful electric lamps and carefully shaped glass lenses. The Fresnel "
    "lens, invented in France in the early nineteenth century, uses rings of prisms to bend "
    "scattered light into a single bright beam that can be seen from many miles away. Each "
    "lighthouse flashes in its own pattern, so a navigator who counts the seconds between "
    "flashes can tell exactly which tower he is looking at. For generations, keepers lived "
    "in small cottages beside the light, climbing the narrow stairs every evening to trim the "
    "wick and polish the glass. Today most lights are automated, but many old towers have "
    "become museums, and visitors still climb to the top to watch the waves."
)


def make_teacher_forced(ref):
    ids = ref.tokenize(PARAGRAPH)
    assert ref.detokenize(ids) == PARAGRAPH
    top1, top5, greedy_mismatch = [], [], []
    for i in range(len(ids)):
        req = dict(GREEDY)
        req.update({"prompt": ids[: i + 1], "max_tokens": 1, "n_predict": 1, "n_probs": 5})
        r = ref.server.handle_completions(req)
        step = r["choices"][0]["logprobs"]["content"][0]
        t5 = top_list(step)
        best = max(t5, key=lambda x: x[1])
        assert best[0] == t5[0][0]
        top1.append(t5[0][0])
        top5.append(t5)
        if int(step["id"]) != t5[0][0]:
            greedy_mismatch.append(i)
    print("teacher-forced: %d tokens, greedy!=top1 at %s" % (len(ids), greedy_mismatch), file=sys.stderr)
    return {
        "source": ("llama.cpp via xllamacpp %s: one Server.handle_completions call per prefix, "
                   "prompt=ids[0..=i] (token ids, no BOS), max_tokens=1, n_probs=5, temperature=0, "
                   "top_k=1, cache_prompt=true, post_sampling_probs=false; CPU, n_ctx=2048"
                   % xlc.__version__),
        "text": PARAGRAPH,
        "ids": ids,
        "indexing": ("top1[i] / top5[i] = prediction for the token after ids[0..=i], for i = 0 .. len(ids)-1 "
                     "inclusive (so len(top1) == len(ids); the last entry predicts past the end of text). "
                     "top1[i] should equal ids[i+1] only when the model happens to be right."),
        "top5_kind": "natural-log probabilities, pre-sampling (softmax over full raw logits), sorted descending",
        "top1": top1,
        "top5": top5,
    }


EXACT_NOTE = ("EXACT variant: the GGUF was converted losslessly to F32 (models/gguf_to_f32.py) and "
              "run with an F32 KV cache, so llama.cpp computes in f32 without rounding activations "
              "to 8 bits. ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--exact", action="store_true",
                    help="run llama.cpp on a lossless F32 copy of the GGUF (models/gguf_to_f32.py) "
                         "with an F32 KV cache, i.e. without its 8-bit activation rounding; writes "
                         "chat_replies_exact.json and teacher_forced_exact.json")
    ap.add_argument("--chat-only", action="store_true",
                    help="write only the chat replies (e.g. for the K-quant files of "
                         "models/ggml_quantize.py); they record the GGUF's SHA-256")
    a = ap.parse_args()
    gguf = a.gguf
    if a.exact:
        import subprocess, tempfile
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        gguf = os.path.join(tempfile.mkdtemp(), "model-f32.gguf")
        subprocess.run([sys.executable, os.path.join(root, "gguf_to_f32.py"), a.gguf, gguf],
                       check=True)
    ref = Ref(gguf, a.threads, f32_cache=a.exact)

    france = ref.render_chat(CHAT_PROMPTS[0])
    fids = ref.tokenize(france)
    assert len(fids) == 50 and fids[:4] == [1, 9690, 198, 2683], fids

    def dump(name, obj):
        with open(os.path.join(a.out, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=None, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")

    suffix = ""
    if a.exact:
        suffix = "_exact"
    elif not a.chat_only:
        dump("tokenizer_ids.json", make_tokenizer(ref, france))
    chat = make_chat(ref)
    assert chat["cases"][0]["reply_text"].startswith("The capital of France is Paris"), chat["cases"][0]["reply_text"]
    if a.chat_only:
        with open(a.gguf, "rb") as f:
            chat["gguf_sha256"] = hashlib.sha256(f.read()).hexdigest()
        if a.exact:
            chat["source"] = EXACT_NOTE + chat["source"]
        dump("chat_replies%s.json" % suffix, chat)
        return
    forced = make_teacher_forced(ref)
    if a.exact:
        chat["source"] = EXACT_NOTE + chat["source"]
        forced["source"] = EXACT_NOTE + forced["source"]
    dump("chat_replies%s.json" % suffix, chat)
    dump("teacher_forced%s.json" % suffix, forced)


if __name__ == "__main__":
    main()
