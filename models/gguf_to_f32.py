#!/usr/bin/env python3
"""Write a copy of a GGUF model with every tensor dequantized to F32 (lossless: each quantized
value is exactly representable in f32), metadata copied unchanged.

Why: llama.cpp quantizes activations on the fly (Q8) when multiplying by Q4/Q8 weights, an
approximation of its own. Running llama.cpp on the F32 copy computes the same model with exact
f32 arithmetic, which is what Ember's f32 reference engine does; it is the right oracle for it.

Usage: python3 models/gguf_to_f32.py IN.gguf OUT.gguf   (needs `pip install gguf numpy`)
"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGUFValueType
from gguf.quants import dequantize


def writer_with_metadata(reader, dst):
    """A GGUFWriter for `dst` holding `reader`'s metadata, unchanged."""
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), main_type, sub_type)
    return writer


def main(src, dst):
    reader = GGUFReader(src)
    writer = writer_with_metadata(reader, dst)
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        writer.add_tensor(tensor.name, values.reshape(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
