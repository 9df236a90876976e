#!/usr/bin/env python3
"""Write a Hugging Face model directory (config.json, safetensors weights, tokenizer.json,
tokenizer_config.json, generation_config.json) from a GGUF file, in the layout `transformers`
saves, so that Ember's HF-directory importer can be tested against the GGUF it came from.

How it was made: it inverts llama.cpp's `convert_hf_to_gguf.py` (the reference for the
mapping), reading the GGUF with the `gguf` package (GGUFReader + gguf.quants.dequantize, so any
tensor type becomes f32). The config keys are the ones transformers' Llama/Qwen2/Qwen3/
Gemma3Text configs save (checked against transformers 5.24's save_pretrained; `--config-style
v4` writes the 4.x spelling most Hub checkpoints carry: `torch_dtype`, `rope_theta`,
`rope_scaling`, Gemma's `rope_local_base_freq`). Safetensors files are written by hand, so the
script needs only numpy and gguf.

What the inversion undoes:
  * llama: the converter permutes the rows of q_proj/k_proj from HF's rotate-half order to
    llama.cpp's adjacent-pair order (`permute(w, n_head, n_head_kv)`); the HF file gets the
    inverse. qwen2/qwen3/gemma3 are stored unpermuted (NeoX RoPE) and are copied as they are.
  * gemma3: the converter stores every `*norm.weight` (input/post-attention/pre- and
    post-feedforward layer norms, the final norm and the per-head q/k norms) as `1 + w`
    (Gemma3RMSNorm multiplies by 1 + w); the HF file gets `w = gguf - 1`.
Before writing, a self-check re-applies the converter's transform to what will be written and
requires it to reproduce the GGUF's dequantized f32 values bit for bit; after writing, every
file is read back and compared with what was meant to be written.

Tokenizer: byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`, pre-tokenizer `smollm`,
`gpt2` or `default`) become a tokenizers `tokenizer.json`; SentencePiece vocabularies (Llama 2,
Gemma) are refused unless `--skip-tokenizer` is given.

`--break KIND` writes a deliberately inconsistent sharded directory for importer tests (see
--help). Usage: python3 models/gguf_to_hf.py IN.gguf OUT_DIR [--dtype f32|f16|bf16] [--shards N]
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

try:
    from gguf import GGUFReader
    from gguf.quants import dequantize
except ImportError:  # pragma: no cover
    sys.exit("gguf_to_hf.py needs the gguf package: pip install gguf numpy")

TRANSFORMERS_VERSION = {"v4": "4.57.1", "v5": "5.24.0"}
HF_ARCH = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
}
# safetensors dtype strings and torch dtype names for --dtype.
DTYPES = {"f32": ("F32", "float32", 4), "f16": ("F16", "float16", 2), "bf16": ("BF16", "bfloat16", 2)}
BREAK_KINDS = {
    "wrong-shard": "the index maps one tensor to a shard that does not hold it (it is in another)",
    "index-missing": "one tensor listed in the index is missing from its shard (and every shard)",
    "duplicate": "one tensor is stored in two shards (the index names one of them)",
    "unindexed": "a shard holds a tensor the index does not list",
    "shape": "one 2-D tensor is stored transposed: valid safetensors, wrong shape for the config",
    "offsets": "one tensor's data_offsets in its shard header do not match its shape and dtype "
               "(the safetensors package refuses the whole shard)",
}


class Unsupported(Exception):
    pass


# --- GGUF reading --------------------------------------------------------------------------

def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def f32_decimal(x):
    """The shortest decimal that reads back as the same f32 (GGUF stores these as f32)."""
    return float(str(np.float32(x)))


def gguf_tensors(reader):
    """{name: f32 array in PyTorch layout ([out, in] for matrices)}."""
    out = {}
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists ne0 (innermost) first
        out[t.name] = values.reshape(shape)
    return out


# --- the converter's transforms and their inverses -----------------------------------------

def llama_permute(w, n_head, n_head_kv=None):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> GGUF."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_unpermute(w, n_head, n_head_kv=None):
    """The inverse of llama_permute: GGUF rows -> HF rotate-half rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(arch, gguf_name):
    """The HF state-dict name of a GGUF tensor (None: unknown)."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) != 4 or parts[0] != "blk" or not parts[1].isdigit():
        return None
    _, i, kind, suffix = parts
    block = {
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    if arch in ("qwen3", "gemma3"):
        block.update({"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"})
    if arch == "gemma3":
        # Gemma's FFN norm is the one before the FFN; its post-attention norm has its own tensor.
        block.update({"ffn_norm": "pre_feedforward_layernorm",
                      "post_attention_norm": "post_attention_layernorm",
                      "post_ffw_norm": "post_feedforward_layernorm"})
    biased = {"attn_q", "attn_k", "attn_v"} if arch in ("qwen2", "llama") else set()
    if kind not in block or (suffix == "bias" and kind not in biased) or suffix not in ("weight", "bias"):
        return None
    return f"model.layers.{i}.{block[kind]}.{suffix}"


def hf_order_key(name):
    """transformers' state_dict order: embeddings, layers in order (attention, MLP, norms), norm, head."""
    within = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "self_attn.q_norm", "self_attn.k_norm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
              "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
              "post_feedforward_layernorm"]
    if name == "model.embed_tokens.weight":
        return (0, 0, 0, name)
    if name.startswith("model.layers."):
        _, _, i, rest = name.split(".", 3)
        module, suffix = rest.rsplit(".", 1)
        return (1, int(i), within.index(module), suffix)
    return (2, 0 if name == "model.norm.weight" else 1, 0, name)


# --- hyperparameters and config.json -------------------------------------------------------

def hparams(reader, tensors):
    arch = field(reader, "general.architecture")
    if arch not in HF_ARCH:
        raise Unsupported(f"GGUF architecture {arch!r} is not supported (only {', '.join(HF_ARCH)})")

    def get(key, default=KeyError):
        v = field(reader, f"{arch}.{key}")
        if v is None:
            if default is KeyError:
                raise Unsupported(f"the GGUF has no {arch}.{key}")
            return default
        return v

    if get("rope.scaling.type", "none") not in ("none",):
        raise Unsupported(f"RoPE scaling {get('rope.scaling.type')!r} is not supported")
    if "rope_freqs.weight" in tensors:
        raise Unsupported("rope_freqs.weight (Llama 3 RoPE scaling) is not supported")
    n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
    n_head_kv = int(get("attention.head_count_kv", n_head))
    head_dim = int(get("attention.key_length", n_embd // n_head))
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise Unsupported("attention.value_length differs from attention.key_length")
    if int(get("rope.dimension_count", head_dim)) != head_dim:
        raise Unsupported("partial RoPE (rope.dimension_count < head width) is not supported")
    if "output.weight" not in tensors and "token_embd.weight" not in tensors:
        raise Unsupported("the GGUF has neither token_embd.weight nor output.weight")
    return {
        "arch": arch, "n_embd": n_embd, "n_head": n_head, "n_head_kv": n_head_kv, "head_dim": head_dim,
        "n_layer": int(get("block_count")), "n_ff": int(get("feed_forward_length")),
        "n_ctx": int(get("context_length")), "eps": f32_decimal(get("attention.layer_norm_rms_epsilon")),
        "rope_base": f32_decimal(get("rope.freq_base", 10000.0)),
        "vocab": int(tensors["token_embd.weight"].shape[0]),
        "tied": "output.weight" not in tensors,
        "biased": "blk.0.attn_q.bias" in tensors,
        "sliding_window": get("attention.sliding_window", None),
        "rope_base_swa": get("rope.freq_base_swa", None),
        "softcap": get("final_logit_softcapping", None),
        "bos": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos": field(reader, "tokenizer.ggml.eos_token_id"),
        "pad": field(reader, "tokenizer.ggml.padding_token_id"),
    }


def rope_keys(style, theta, rope_type="default"):
    if style == "v5":
        return {"rope_parameters": {"rope_theta": theta, "rope_type": rope_type}}
    return {"rope_scaling": None, "rope_theta": theta}


def config_json(h, dtype, style):
    arch = h["arch"]
    cls, model_type = HF_ARCH[arch]
    c = {"architectures": [cls]}
    common = {
        "attention_dropout": 0.0, "bos_token_id": h["bos"], "eos_token_id": h["eos"],
        "hidden_size": h["n_embd"], "initializer_range": 0.02, "intermediate_size": h["n_ff"],
        "max_position_embeddings": h["n_ctx"], "model_type": model_type,
        "num_attention_heads": h["n_head"], "num_hidden_layers": h["n_layer"],
        "num_key_value_heads": h["n_head_kv"], "pad_token_id": h["pad"], "rms_norm_eps": h["eps"],
        "tie_word_embeddings": h["tied"], "use_cache": True, "vocab_size": h["vocab"],
    }
    c.update(common)
    if arch == "llama":
        c.update({"attention_bias": h["biased"], "head_dim": h["head_dim"], "hidden_act": "silu",
                  "mlp_bias": False, "pretraining_tp": 1})
        c.update(rope_keys(style, h["rope_base"]))
    elif arch in ("qwen2", "qwen3"):
        if arch == "qwen2" and h["head_dim"] != h["n_embd"] // h["n_head"]:
            raise Unsupported("qwen2 with a head width other than hidden_size / heads")
        if arch == "qwen3":
            c.update({"attention_bias": h["biased"], "head_dim": h["head_dim"]})
        c.update({"hidden_act": "silu", "layer_types": ["full_attention"] * h["n_layer"],
                  "max_window_layers": h["n_layer"], "sliding_window": None, "use_sliding_window": False})
        c.update(rope_keys(style, h["rope_base"]))
    elif arch == "gemma3":
        # Not in a Gemma 3 GGUF; llama.cpp's fixed choices: every 6th layer global, the local
        # layers' RoPE base 10000, query scale 1/sqrt(head_dim) (27B excepted).
        pattern = 6
        local_base = f32_decimal(h["rope_base_swa"]) if h["rope_base_swa"] is not None else 10000.0
        scalar = h["head_dim"]
        if h["n_layer"] == 62:  # llama.cpp's LLM_TYPE_27B: 1/sqrt(n_embd / n_head)
            scalar = h["n_embd"] // h["n_head"]
        c.update({
            "_sliding_window_pattern": pattern, "attention_bias": False, "attn_logit_softcapping": None,
            "final_logit_softcapping": None if h["softcap"] is None else f32_decimal(h["softcap"]),
            "head_dim": h["head_dim"], "hidden_activation": "gelu_pytorch_tanh",
            "layer_types": ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                            for i in range(h["n_layer"])],
            "query_pre_attn_scalar": scalar, "sliding_window": h["sliding_window"],
            "use_bidirectional_attention": False,
        })
        if style == "v5":
            c["rope_parameters"] = {"full_attention": {"rope_theta": h["rope_base"], "rope_type": "default"},
                                    "sliding_attention": {"rope_theta": local_base, "rope_type": "default"}}
        else:
            c.update({"rope_local_base_freq": local_base, "rope_scaling": None, "rope_theta": h["rope_base"]})
    c["dtype" if style == "v5" else "torch_dtype"] = DTYPES[dtype][1]
    c["transformers_version"] = TRANSFORMERS_VERSION[style]
    return {k: c[k] for k in sorted(c)}  # transformers writes the keys sorted


# --- weights --------------------------------------------------------------------------------

def hf_weights(h, tensors):
    """{HF name: f32 array}, in transformers' order, after undoing the converter's transforms;
    raises if re-applying the converter's transform does not give back the GGUF bit for bit."""
    arch, out = h["arch"], {}
    for name, w in tensors.items():
        hf = hf_name(arch, name)
        if hf is None:
            raise Unsupported(f"GGUF tensor {name!r} has no Hugging Face counterpart for {arch}")
        redo = None
        if arch == "llama" and name.split(".")[-2] in ("attn_q", "attn_k"):
            n_kv = h["n_head"] if name.split(".")[-2] == "attn_q" else h["n_head_kv"]
            w_hf = llama_unpermute(w, h["n_head"], n_kv)
            redo = llama_permute(w_hf, h["n_head"], n_kv)
        elif arch == "gemma3" and name.endswith("norm.weight"):
            w_hf = w - np.float32(1.0)
            redo = w_hf + np.float32(1.0)
        else:
            w_hf = w
        if redo is not None and not np.array_equal(redo.view(np.uint32), w.view(np.uint32)):
            bad = int(np.count_nonzero(redo.view(np.uint32) != w.view(np.uint32)))
            raise AssertionError(f"self-check: re-converting {hf} does not reproduce {name} ({bad} values differ)")
        out[hf] = np.ascontiguousarray(w_hf, dtype=np.float32)
    expect = 2 + (0 if h["tied"] else 1)
    if len([n for n in out if not n.startswith("model.layers.")]) != expect:
        raise Unsupported("the GGUF lacks token_embd.weight or output_norm.weight")
    return {k: out[k] for k in sorted(out, key=hf_order_key)}


def to_bf16_bits(a):
    """bf16 = the upper 16 bits of f32, rounded to nearest even (NaNs stay NaN)."""
    u = a.astype(np.float32, copy=False).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def encode(a, dtype):
    """Little-endian bytes of `a` in `dtype`."""
    if dtype == "f32":
        return a.astype("<f4", copy=False).tobytes()
    if dtype == "f16":
        with np.errstate(over="ignore"):
            b = a.astype("<f2")
        if not np.isfinite(b).all() and np.isfinite(a).all():
            raise Unsupported("a value does not fit in f16; use --dtype bf16 or f32")
        return b.tobytes()
    return to_bf16_bits(a).astype("<u2").tobytes()


def write_safetensors(path, entries, metadata=True):
    """entries: list of (name, dtype string, shape, bytes) or (name, dtype, shape, bytes, offsets)
    where an explicit offsets pair overrides the true one (for --break offsets)."""
    header, pos = {}, 0
    for e in entries:
        name, st_dtype, shape, data = e[:4]
        offsets = [pos, pos + len(data)]
        header[name] = {"dtype": st_dtype, "shape": list(shape),
                        "data_offsets": list(e[4]) if len(e) > 4 else offsets}
        pos += len(data)
    if metadata:
        header = {"__metadata__": {"format": "pt"}, **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for e in entries:
            f.write(e[3])


def read_safetensors(path):
    """{name: (dtype, shape, bytes)} of a safetensors file (a strict reader for the self-check)."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    header.pop("__metadata__", None)
    data = blob[8 + n:]
    return {k: (v["dtype"], tuple(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}


def split_shards(names, sizes, n):
    """Consecutive groups of `names` (in order), n of them, of about equal bytes, as
    transformers' shard_checkpoint fills one shard after another."""
    if n > len(names):
        raise Unsupported(f"--shards {n} is more than the {len(names)} tensors")
    total, groups, cur, acc = sum(sizes), [], [], 0
    for i, (name, size) in enumerate(zip(names, sizes)):
        left_names, left_groups = len(names) - i, n - len(groups)
        if cur and (left_names < left_groups or (acc + size / 2 > total * (len(groups) + 1) / n
                                                 and left_groups > 1)):
            groups.append(cur)
            cur = []
        cur.append(name)
        acc += size
    groups.append(cur)
    assert len(groups) == n, (len(groups), n)
    return groups


def write_weights(out_dir, weights, dtype, n_shards, brk=None):
    st_dtype = DTYPES[dtype][0]
    blobs = {k: encode(v, dtype) for k, v in weights.items()}
    shapes = {k: v.shape for k, v in weights.items()}
    names = list(weights)
    if n_shards == 1 and brk is None:
        write_safetensors(os.path.join(out_dir, "model.safetensors"),
                          [(k, st_dtype, shapes[k], blobs[k]) for k in names])
        return ["model.safetensors"], blobs
    groups = split_shards(names, [len(blobs[k]) for k in names], n_shards)
    files = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    weight_map = {k: files[i] for i, g in enumerate(groups) for k in g}
    contents = {f: [(k, st_dtype, shapes[k], blobs[k]) for k in g] for f, g in zip(files, groups)}
    if brk is not None:
        break_shards(brk, contents, weight_map, files, groups)
    for f in files:
        write_safetensors(os.path.join(out_dir, f), contents[f])
    index = {"metadata": {"total_size": sum(len(b) for b in blobs.values())},
             "weight_map": {k: weight_map[k] for k in sorted(weight_map)}}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return files, blobs


def break_shards(kind, contents, weight_map, files, groups):
    """Make the sharded directory inconsistent in the way `kind` names (prints what it did)."""
    if kind in ("wrong-shard", "duplicate") and len(files) < 2:
        raise Unsupported(f"--break {kind} needs --shards 2 or more")
    victim = groups[0][-1]  # the last tensor of the first shard
    first = contents[files[0]]
    entry = next(e for e in first if e[0] == victim)
    if kind == "wrong-shard":
        weight_map[victim] = files[1]
        what = f"index maps {victim} to {files[1]}; it is in {files[0]}"
    elif kind == "index-missing":
        first.remove(entry)
        what = f"{victim} is in the index ({files[0]}) but in no shard"
    elif kind == "duplicate":
        contents[files[1]].insert(0, entry)
        what = f"{victim} is in {files[0]} (the index's) and in {files[1]}"
    elif kind == "unindexed":
        del weight_map[victim]
        what = f"{victim} is in {files[0]} but not in the index"
    elif kind == "shape":
        victim = next(k for g in groups for k in g if k.endswith("mlp.down_proj.weight"))
        f = weight_map[victim]
        i, e = next((i, e) for i, e in enumerate(contents[f]) if e[0] == victim)
        contents[f][i] = (e[0], e[1], tuple(reversed(e[2])), e[3])
        what = f"{victim} is stored with shape {list(reversed(e[2]))} instead of {list(e[2])}"
    elif kind == "offsets":
        i = first.index(entry)
        true = sum(len(e[3]) for e in first[:i])
        first[i] = (*entry[:4], (true, true + len(entry[3]) - 2))
        what = f"{victim}'s data_offsets in {files[0]} are 2 bytes short of its shape"
    else:
        raise Unsupported(f"unknown --break kind {kind!r}")
    print(f"--break {kind}: {what}", file=sys.stderr)


# --- tokenizer ------------------------------------------------------------------------------

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def tokenizer_files(reader, h, merges_form):
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise Unsupported(f"tokenizer.ggml.model {model!r} (SentencePiece) is not supported, only byte-level "
                          "BPE ('gpt2'); pass --skip-tokenizer to write the weights and config alone")
    pre = field(reader, "tokenizer.ggml.pre", "default")
    if pre == "smollm":
        pre_tok = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                          dict(BYTE_LEVEL)]}
    elif pre in ("gpt2", "default"):
        pre_tok = dict(BYTE_LEVEL)
    else:
        raise Unsupported(f"tokenizer.ggml.pre {pre!r} is not supported (smollm, gpt2, default); "
                          "pass --skip-tokenizer to write the weights and config alone")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = field(reader, "tokenizer.ggml.merges") or []
    if len(set(tokens)) != len(tokens):
        raise Unsupported("the vocabulary has duplicate tokens, which tokenizer.json cannot hold")
    added = []
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty in (3, 4):  # CONTROL (special), USER_DEFINED (not special)
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": ty == 3})
        elif ty not in (1,):
            raise Unsupported(f"token {i} {tok!r} has GGUF type {ty}, which a byte-level BPE cannot hold")
    tok_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": pre_tok,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges] if merges_form == "pairs" else list(merges)},
    }

    def tok(key):
        i = field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if i is None or not 0 <= i < len(tokens) else tokens[i]

    specials = [a["content"] for a in added if a["special"]]
    cfg = {
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(field(reader, "tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": False,
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                   "single_word", "special")}
                                 for a in added},
        "additional_special_tokens": [s for s in specials if s not in {tok("bos"), tok("eos"), tok("unknown"),
                                                                       tok("padding")}],
        "bos_token": tok("bos"),
        "clean_up_tokenization_spaces": False,
        "eos_token": tok("eos"),
        "model_max_length": h["n_ctx"],
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
    }
    if tok("padding") is not None:
        cfg["pad_token"] = tok("padding")
    if tok("unknown") is not None:
        cfg["unk_token"] = tok("unknown")
    template = field(reader, "tokenizer.chat_template")
    if template is not None:
        cfg["chat_template"] = template
    return tok_json, {k: cfg[k] for k in sorted(cfg)}


# --- main -----------------------------------------------------------------------------------

def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def check_written(out_dir, files, weights, blobs, dtype, brk):
    """Read every written shard back: each tensor's dtype, shape and bytes are the intended ones."""
    seen = {}
    for f in files:
        for name, (st_dtype, shape, data) in read_safetensors(os.path.join(out_dir, f)).items():
            seen.setdefault(name, []).append(f)
            if brk is None:
                assert st_dtype == DTYPES[dtype][0] and shape == weights[name].shape and data == blobs[name], name
                if dtype == "f32":
                    back = np.frombuffer(data, "<f4").reshape(shape)
                    assert np.array_equal(back.view(np.uint32), weights[name].view(np.uint32)), name
    if brk is None:
        assert sorted(seen) == sorted(weights) and all(len(v) == 1 for v in seen.values())


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + "\n\nSupported: GGUF architectures " + ", ".join(HF_ARCH)
        + "; tokenizers: byte-level BPE (tokenizer.ggml.model gpt2, pre smollm/gpt2/default).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--break kinds (need --shards >= 2 for wrong-shard and duplicate):\n"
        + "\n".join(f"  {k:14} {v}" for k, v in BREAK_KINDS.items())
        + "\n\nThe transforms undone (llama's Q/K row permutation, Gemma 3's 1 + w norms) are "
        "self-checked: re-applying llama.cpp's converter to the output reproduces the GGUF's f32 values "
        "exactly, and every written file is read back and compared.")
    p.add_argument("gguf", metavar="IN.gguf")
    p.add_argument("out_dir", metavar="OUT_DIR", help="created if missing; files in it are overwritten")
    p.add_argument("--dtype", choices=list(DTYPES), default="f32",
                   help="safetensors dtype (F32/F16/BF16; bf16 rounds to nearest even) [default: f32]")
    p.add_argument("--shards", type=int, default=1,
                   help="1: model.safetensors; N > 1: model-0000i-of-0000N.safetensors + "
                   "model.safetensors.index.json [default: 1]")
    p.add_argument("--config-style", choices=["v4", "v5"], default="v4",
                   help="v4: torch_dtype, rope_theta/rope_scaling (and Gemma's rope_local_base_freq), as "
                   "transformers 4.x saved and most Hub checkpoints carry; v5: dtype, rope_parameters, as "
                   "transformers 5 saves [default: v4]")
    p.add_argument("--merges", choices=["pairs", "strings"], default="pairs",
                   help="tokenizer.json merges as [\"a\", \"b\"] pairs (tokenizers >= 0.20 writes these) or "
                   "\"a b\" strings (older files) [default: pairs]")
    p.add_argument("--skip-tokenizer", action="store_true",
                   help="write no tokenizer files (for SentencePiece vocabularies, e.g. Gemma's)")
    p.add_argument("--break", dest="brk", choices=list(BREAK_KINDS), metavar="KIND",
                   help="write a deliberately inconsistent sharded directory, always with an index "
                   "(see below)")
    a = p.parse_args(argv)
    if a.shards < 1:
        p.error("--shards must be at least 1")
    try:
        reader = GGUFReader(a.gguf)
        tensors = gguf_tensors(reader)
        h = hparams(reader, tensors)
        config = config_json(h, a.dtype, a.config_style)
        tok = None if a.skip_tokenizer else tokenizer_files(reader, h, a.merges)
        weights = hf_weights(h, tensors)
        os.makedirs(a.out_dir, exist_ok=True)
        for stale in os.listdir(a.out_dir):  # weights of an earlier run with another --shards
            if stale == "model.safetensors.index.json" or (stale.startswith("model") and stale.endswith(".safetensors")):
                os.remove(os.path.join(a.out_dir, stale))
        write_json(os.path.join(a.out_dir, "config.json"), config)
        gen = {"bos_token_id": h["bos"], "eos_token_id": h["eos"]}
        if h["pad"] is not None:
            gen["pad_token_id"] = h["pad"]
        gen["transformers_version"] = TRANSFORMERS_VERSION[a.config_style]
        write_json(os.path.join(a.out_dir, "generation_config.json"), gen)
        if tok is not None:
            write_json(os.path.join(a.out_dir, "tokenizer.json"), tok[0])
            write_json(os.path.join(a.out_dir, "tokenizer_config.json"), tok[1])
            special_map = {k: tok[1][k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                           if tok[1].get(k) is not None}
            if tok[1]["additional_special_tokens"]:
                special_map["additional_special_tokens"] = tok[1]["additional_special_tokens"]
            write_json(os.path.join(a.out_dir, "special_tokens_map.json"), special_map)
        files, blobs = write_weights(a.out_dir, weights, a.dtype, a.shards, a.brk)
        check_written(a.out_dir, files, weights, blobs, a.dtype, a.brk)
    except Unsupported as e:
        sys.exit(f"gguf_to_hf.py: {a.gguf}: {e}")
    print(f"{a.out_dir}: {h['arch']} -> {HF_ARCH[h['arch']][0]}, {len(weights)} tensors ({a.dtype}) in "
          f"{len(files)} file(s){'' if tok else ', no tokenizer'}; "
          + (f"deliberately broken ({a.brk})" if a.brk else "self-check passed"))


if __name__ == "__main__":
    main()
