#!/usr/bin/env python3
"""Quantize an F32 GGUF (e.g. one written by gguf_to_f32.py) to Q4_K_M, Q5_K_M, Q6_K or Q5_0 with
llama.cpp's own quantization kernels, to make test files in the types people download.

The xllamacpp wheel (llama.cpp, the peer `ember bench` compares against) exports ggml's
`ggml_quantize_chunk` but not `llama_model_quantize`, so this script calls the former through
ctypes for every tensor and reproduces the type choice of llama.cpp's `llama_tensor_get_type`
for these four types:

- 1-D tensors (norms) stay F32.
- The output matrix (`output.weight`, or `token_embd.weight` when the embedding is tied) is Q6_K
  for every type here.
- Q4_K_M / Q5_K_M: `attn_v` and `ffn_down` of the layers `use_more_bits` picks (the first and last
  eighth, and every third between) are Q6_K; the rest Q4_K / Q5_K.
- A matrix whose rows are not a multiple of 256 cannot hold K-quant blocks: Q4_K becomes Q5_0,
  Q5_K becomes Q5_1, Q6_K becomes Q8_0 (llama.cpp's fallbacks). SmolLM2's width is 576, so
  most of its matrices fall back; its `ffn_down` rows (1536) stay K-quants.

Usage: python3 models/ggml_quantize.py IN-F32.gguf OUT.gguf TYPE   (TYPE: q4_k_m, q5_k_m, q6_k,
q5_0; needs `pip install gguf numpy xllamacpp`). Prints each tensor's type on stderr.
"""
import ctypes
import os
import re
import sys

import numpy as np
import xllamacpp
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT, GGUFReader

from gguf_to_f32 import writer_with_metadata

FALLBACK = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}
BASE = {"q4_k_m": QT.Q4_K, "q5_k_m": QT.Q5_K, "q6_k": QT.Q6_K, "q5_0": QT.Q5_0}


def ggml():
    path = os.path.join(os.path.dirname(xllamacpp.__file__), "xllamacpp.abi3.so")
    lib = ctypes.CDLL(path)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]
    return lib


def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def choose(name, row_len, kind, n_layer, has_output):
    base = BASE[kind]
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        ty = QT.Q6_K
    else:
        ty = base
        layer = re.match(r"blk\.(\d+)\.", name)
        if kind in ("q4_k_m", "q5_k_m") and layer and re.search(r"\.(attn_v|ffn_down)\.", name):
            if use_more_bits(int(layer.group(1)), n_layer):
                ty = QT.Q6_K
    if ty in FALLBACK and row_len % 256 != 0:
        ty = FALLBACK[ty]
    return ty


def main(src, dst, kind):
    if kind not in BASE:
        sys.exit(f"unknown type {kind!r}: one of {', '.join(BASE)}")
    lib = ggml()
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    n_layer = reader.fields[f"{arch}.block_count"].contents()
    names = {t.name for t in reader.tensors}
    writer = writer_with_metadata(reader, dst)
    for tensor in reader.tensors:
        if tensor.tensor_type != QT.F32:
            sys.exit(f"{tensor.name} is {tensor.tensor_type.name}: give an F32 GGUF (gguf_to_f32.py)")
        values = np.ascontiguousarray(tensor.data, dtype=np.float32)
        shape = [int(d) for d in tensor.shape.tolist()]  # ne0 first
        row_len, rows = shape[0], int(np.prod(shape[1:]))
        if len(shape) == 1:
            writer.add_tensor(tensor.name, values.reshape(shape[::-1]))
            print(f"{tensor.name}: F32", file=sys.stderr)
            continue
        ty = choose(tensor.name, row_len, kind, n_layer, "output.weight" in names)
        block, nbytes = GGML_QUANT_SIZES[ty]
        out = np.zeros(rows * row_len // block * nbytes, dtype=np.uint8)
        written = lib.ggml_quantize_chunk(
            int(ty), values.ctypes.data, out.ctypes.data, 0, rows, row_len, None
        )
        assert written == out.size, (tensor.name, written, out.size)
        writer.add_tensor(tensor.name, out.reshape(rows, -1), raw_dtype=ty)
        print(f"{tensor.name}: {ty.name}", file=sys.stderr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
