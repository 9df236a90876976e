"""onnxruntime peer for `ember bench` (run by it with `python3 -c`; needs `pip install onnxruntime numpy`).

Arguments: DIR THREADS DECODE_TOKENS IDS_JSON [IDS_JSON ...]. DIR holds the graph `ember
export-onnx` writes (model.onnx + model.weights; `ember bench` sets its MatMulNBits nodes to
accuracy_level 4, int8 activations, as Ember's kernels compute). Loads it once on THREADS intra-op threads (one
inter-op thread, sequential execution), then for each prompt (token ids) prefills it as one
batch and decodes DECODE_TOKENS tokens greedily, feeding each argmax back one at a time with the
KV cache (present_* -> past_*, kept as onnxruntime values), ignoring end-of-sequence: what Ember
measures of itself. Prints one JSON object with load seconds and, per prompt, the time to the
first token and the prefill and decode speeds.
"""
import json, sys, time

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as error:
    sys.exit(f"{error} (pip install onnxruntime numpy)")

directory, threads, decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prompts = [json.loads(a) for a in sys.argv[4:]]
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
start = time.perf_counter()
session = ort.InferenceSession(f"{directory}/model.onnx", options,
                               providers=["CPUExecutionProvider"])
load = time.perf_counter() - start
# The cache before the first token: past_* with an empty sequence axis (the symbolic one).
empty = {}
for value in session.get_inputs():
    if value.name.startswith("past_"):
        shape = [d if isinstance(d, int) else 0 for d in value.shape]
        empty[value.name] = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=np.float32))
outputs = [o.name for o in session.get_outputs()]
logits_at = outputs.index("logits")
presents = {i: name.replace("present_", "past_", 1)
            for i, name in enumerate(outputs) if name.startswith("present_")}


def step(ids, position, past):
    """Feeds `ids` from `position` on; returns the greedy next token and the cache after them."""
    binding = session.io_binding()
    input_ids = np.array([ids], dtype=np.int64)
    position_ids = np.arange(position, position + len(ids), dtype=np.int64)[None, :]
    binding.bind_cpu_input("input_ids", input_ids)
    binding.bind_cpu_input("position_ids", position_ids)
    for name, value in past.items():
        binding.bind_ortvalue_input(name, value)
    for name in outputs:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)
    values = binding.get_outputs()
    token = int(values[logits_at].numpy().argmax())
    return token, {name: values[i] for i, name in presents.items()}


runs = []
for ids in prompts:
    start = time.perf_counter()
    token, past = step(ids, 0, empty)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for position in range(len(ids), len(ids) + decode - 1):
        token, past = step([token], position, past)
    elapsed = time.perf_counter() - start
    runs.append({"prompt_tokens": len(ids),
                 "prefill_tokens_per_second": len(ids) / first,
                 "decode_tokens_per_second": (decode - 1) / max(elapsed, 1e-9),
                 "time_to_first_token_seconds": first})
print(json.dumps({"engine": "onnxruntime %s (CPU)" % ort.__version__,
                  "load_seconds": load, "runs": runs}))
