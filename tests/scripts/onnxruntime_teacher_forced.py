"""Runs an exported Ember ONNX graph (`ember export-onnx`) in onnxruntime, teacher-forced.

Usage: onnxruntime_teacher_forced.py DIR IDS_JSON [PREFILL]

Feeds the first PREFILL ids (default 1) as one batch, then the rest one at a time, carrying the
KV cache (present_* -> past_*) between calls, exactly as Ember's engine does. Prints one JSON
object: the onnxruntime version and, for every position from PREFILL-1 on, the next-token logits.
"""

import json
import sys

import numpy as np
import onnxruntime as ort

directory, ids_json = sys.argv[1], sys.argv[2]
prefill = int(sys.argv[3]) if len(sys.argv) > 3 else 1
ids = json.loads(ids_json)
options = ort.SessionOptions()
options.intra_op_num_threads = 2
session = ort.InferenceSession(f"{directory}/model.onnx", options, providers=["CPUExecutionProvider"])
past = {}
for value in session.get_inputs():
    if value.name.startswith("past_"):
        # The symbolic past_sequence axis starts empty.
        shape = [d if isinstance(d, int) else 0 for d in value.shape]
        past[value.name] = np.zeros(shape, dtype=np.float32)
output_names = [o.name for o in session.get_outputs()]
logits = []
position = 0
chunks = [ids[:prefill]] + [[i] for i in ids[prefill:]]
for chunk in chunks:
    feed = {
        "input_ids": np.array([chunk], dtype=np.int64),
        "position_ids": np.arange(position, position + len(chunk), dtype=np.int64)[None, :],
        **past,
    }
    outputs = dict(zip(output_names, session.run(output_names, feed)))
    position += len(chunk)
    logits.append(outputs["logits"][0].tolist())
    past = {name.replace("present_", "past_"): v for name, v in outputs.items() if name.startswith("present_")}
print(json.dumps({"onnxruntime": ort.__version__, "logits": logits}))
