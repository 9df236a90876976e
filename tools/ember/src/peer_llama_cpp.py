"""llama.cpp peer for `ember bench` (run by it with `python3 -c`; needs `pip install xllamacpp`).

Arguments: GGUF THREADS DECODE_TOKENS IDS_JSON [IDS_JSON ...]. Loads the model once, then for
each prompt (token ids) prefills it and decodes DECODE_TOKENS tokens greedily, ignoring
end-of-sequence. Prints one JSON object with load seconds and llama.cpp's own timings.
"""
import json, sys, time, urllib.request

import xllamacpp as xlc

path, threads, decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prompts = [json.loads(a) for a in sys.argv[4:]]
params = xlc.CommonParams()
params.model.path = path
params.n_ctx = 2048
params.n_parallel = 1
params.n_gpu_layers = 0
params.cpuparams.n_threads = threads
params.cpuparams_batch.n_threads = threads
start = time.perf_counter()
server = xlc.Server(params)
load = time.perf_counter() - start
runs = []
for ids in prompts:
    body = {"prompt": ids, "n_predict": decode, "temperature": 0.0, "top_k": 1,
            "ignore_eos": True, "cache_prompt": False}
    request = urllib.request.Request(server.listening_address + "/completion",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        timings = json.loads(response.read())["timings"]
    runs.append({"prompt_tokens": len(ids),
                 "prefill_tokens_per_second": timings["prompt_per_second"],
                 "decode_tokens_per_second": timings["predicted_per_second"],
                 "time_to_first_token_seconds": timings["prompt_ms"] / 1000.0})
print(json.dumps({"engine": "llama.cpp (xllamacpp %s)" % xlc.__version__,
                  "load_seconds": load, "runs": runs}))
