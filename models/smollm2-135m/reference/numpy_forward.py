#!/usr/bin/env python3
"""Independent float64 numpy forward pass of SmolLM2-135M (llama arch) from the GGUF.

Usage:
    python numpy_forward.py --gguf /path/to/SmolLM2-135M-Instruct.Q4_1.gguf [--out DIR]

Weights are dequantized with gguf-py (gguf.quants.dequantize) and ALL arithmetic is
float64 (no activation quantization, no f16 KV cache) -- i.e. "exact math on the
quantized weights". This is NOT llama.cpp; it exists to show how far llama.cpp's
own numerics (Q8_1/Q8_0-quantized activations, f16 KV cache) sit from exact math.

Reads teacher_forced.json and chat_replies.json (made by make_reference.py) for the
token ids, writes numpy_reference.json with:
  teacher_forced: top1/top5 for every prefix of the same ids (same indexing)
  chat: greedy replies (argmax, stop at eos id 2 or 64 tokens) from the same prompt_ids
"""
import argparse, importlib.metadata, json, os
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

NH, NKV, HD, EPS, THETA, EOS = 9, 3, 64, 1e-5, 100000.0, 2


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        self.w = {}
        for t in r.tensors:
            a = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64)
            self.w[t.name] = a.reshape([int(x) for x in reversed(t.shape)])  # [ne1, ne0] (row-major)
        self.L = sum(1 for k in self.w if k.endswith("attn_norm.weight"))
        self.emb = self.w["token_embd.weight"]
        self.out = self.w.get("output.weight", self.emb)  # tied

    @staticmethod
    def rms(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + EPS) * w

    @staticmethod
    def rope(v, pos):  # llama.cpp LLAMA_ROPE_TYPE_NORM: rotate adjacent pairs (2i, 2i+1)
        inv = THETA ** (-np.arange(0, HD, 2) / HD)
        ang = pos[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = v[..., 0::2], v[..., 1::2]
        o = np.empty_like(v)
        o[..., 0::2] = a * c - b * s
        o[..., 1::2] = a * s + b * c
        return o

    def forward(self, ids, cache):
        """Evaluate ids appended after the cache; returns log-softmax for each new position."""
        n0 = len(cache[0][0]) if cache else 0
        n = len(ids)
        pos = np.arange(n0, n0 + n, dtype=np.float64)
        x = self.emb[ids]
        for l in range(self.L):
            p = "blk.%d." % l
            h = self.rms(x, self.w[p + "attn_norm.weight"])
            q = self.rope((h @ self.w[p + "attn_q.weight"].T).reshape(n, NH, HD), pos)
            k = self.rope((h @ self.w[p + "attn_k.weight"].T).reshape(n, NKV, HD), pos)
            v = (h @ self.w[p + "attn_v.weight"].T).reshape(n, NKV, HD)
            if len(cache) <= l:
                cache.append([k, v])
            else:
                cache[l][0] = np.concatenate([cache[l][0], k]); cache[l][1] = np.concatenate([cache[l][1], v])
            K = np.repeat(cache[l][0], NH // NKV, axis=1); V = np.repeat(cache[l][1], NH // NKV, axis=1)
            att = np.einsum("qhd,khd->hqk", q, K) / np.sqrt(HD)
            kpos = np.arange(K.shape[0])
            att = np.where(kpos[None, None, :] <= pos[None, :, None], att, -np.inf)
            att = np.exp(att - att.max(-1, keepdims=True)); att /= att.sum(-1, keepdims=True)
            x = x + np.einsum("hqk,khd->qhd", att, V).reshape(n, NH * HD) @ self.w[p + "attn_output.weight"].T
            h = self.rms(x, self.w[p + "ffn_norm.weight"])
            g = h @ self.w[p + "ffn_gate.weight"].T
            u = h @ self.w[p + "ffn_up.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * u) @ self.w[p + "ffn_down.weight"].T
        logits = self.rms(x, self.w["output_norm.weight"]) @ self.out.T
        lp = logits - logits.max(-1, keepdims=True)
        return lp - np.log(np.exp(lp).sum(-1, keepdims=True))


def top5(lp):
    idx = np.argsort(-lp, kind="stable")[:5]
    return [[int(i), float(lp[i])] for i in idx]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()
    m = Model(a.gguf)
    tf = json.load(open(os.path.join(a.out, "teacher_forced.json")))
    chat = json.load(open(os.path.join(a.out, "chat_replies.json")))
    lp = m.forward(tf["ids"], [])
    t5 = [top5(row) for row in lp]
    res = {
        "source": ("numpy %s float64 forward pass (numpy_forward.py), weights dequantized by gguf-py %s; "
                   "NOT llama.cpp" % (np.__version__, importlib.metadata.version("gguf"))),
        "teacher_forced": {"ids": tf["ids"], "top1": [r[0][0] for r in t5], "top5": t5},
        "chat": [],
    }
    for c in chat["cases"]:
        cache = []
        lp = m.forward(c["prompt_ids"], cache)[-1]
        reply, steps = [], []
        while True:
            steps.append(top5(lp))
            t = steps[-1][0][0]
            if t == EOS or len(reply) == chat["max_tokens"]:
                break
            reply.append(t)
            if len(reply) == chat["max_tokens"]:
                break
            lp = m.forward([t], cache)[-1]
        res["chat"].append({"prompt": c["prompt"], "reply_ids": reply,
                            "finish": "eos" if steps[-1][0][0] == EOS and len(reply) < chat["max_tokens"] else "length",
                            "top5": steps, "same_as_llama_cpp": reply == c["reply_ids"]})
    with open(os.path.join(a.out, "numpy_reference.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
