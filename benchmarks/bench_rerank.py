"""End-to-end rerank throughput: the plugin against the transformers reference, in one run.

On one random Qwen3-VL reranker checkpoint (made by ``make_tiny_checkpoint``, large enough that
compute dominates on a CPU) and the same (query, document) pairs, it times:

  plugin-offline   stock ``LLM.score`` through the plugin (all pairs in one call)
  plugin-online    stock ``vllm serve`` on 127.0.0.1, N concurrent clients posting /v1/rerank
  ref-pairwise     transformers Qwen3-VL, one forward per pair (as the official scorer)
  ref-padded       transformers Qwen3-VL, padded batches (attention mask, last real token)

Scenarios:
  short-long     (i)   queries of ~30 words, 16 documents of ~200 words each
  shared-prefix  (ii)  one 256-token query, 32 documents of 64 tokens; prefix caching on and off
                       (scores must agree within 1e-5 in fp32)
  every-token    (iii) scenario (i) pairs with prefix caching off: every prompt token computed;
                       achieved FLOP/s of the language-model forward vs this machine's matmul rate
  startup              ``vllm serve`` time-to-healthy of the embedded default tiny model

Timings are medians over ``--repeats`` rounds; in each round every method runs once on the same
pairs, one after the other (the prefix cache is reset first), so a noisy neighbour hits all
alike. Ratios are taken within the run.

    python benchmarks/bench_rerank.py                     # everything, fp32 and bf16
    python benchmarks/bench_rerank.py --quick             # smoke run, small sizes
    python benchmarks/bench_rerank.py --dtype float32 --scenario short-long --skip-online
    python benchmarks/bench_rerank.py --scenario every-token --profile   # + op profile
    VLLM_ASCEND_RERANK_CPU_LINEAR=torch python benchmarks/bench_rerank.py  # plain F.linear

The plugin's engines run its defaults (C++ attention, oneDNN linear layers with prepacked
weights); plugin variables set in the environment reach them, e.g. to time ``F.linear``.
"""

import sys
from pathlib import Path

# The code lives in the package ``rerank`` next to this script (run as a script, its folder
# is already sys.path[0]).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from rerank.cli import main  # noqa: E402

if __name__ == "__main__":  # vLLM spawns its engine processes: keep the guard
    main(__doc__)
