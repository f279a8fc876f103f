"""One side's LLM, driven over stdin, results on a pipe of their own (vLLM logs go to
stdout/stderr, captured in a log file).

Started by ``side.Side`` as a script, ``<side's python> benchmarks/peer/worker.py --worker NAME
--worker-config FILE --result-fd FD``, from a temporary directory: only this folder is then on
its ``sys.path`` (not the repository, whose ``vllm_ascend_rerank`` the stock side must not see),
and it imports only the stdlib, psutil, torch and vLLM, never the package it sits in, since it
also runs in the stock venv. The driver imports ``tree``/``tree_cpu`` from here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _worker_info(_worker: object) -> dict:
    """Runs inside the model worker process (sent with collective_rpc, which passes the
    worker)."""
    import os
    import sys

    import torch

    return {
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        "affinity": sorted({c for t in os.listdir("/proc/self/task") for c in _affinity(int(t))}),
        "pinned_threads": sum(len(_affinity(int(t))) == 1 for t in os.listdir("/proc/self/task")),
        "plugin_module_loaded": any(m.startswith("vllm_ascend_rerank") for m in sys.modules),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def _affinity(tid: int) -> set[int]:
    try:
        return os.sched_getaffinity(tid)
    except OSError:  # the thread ended meanwhile
        return set()


def tree(pid: int) -> list:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_cpu(pid: int) -> float:
    import psutil

    total = 0.0
    for p in tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def worker(side: str, config_path: str, result_fd: int) -> None:
    import hashlib
    import importlib.util

    cfg = json.loads(Path(config_path).read_text())
    out = os.fdopen(result_fd, "w", buffering=1)

    def send(kind: str, **payload) -> None:
        out.write(json.dumps({"kind": kind, **payload}) + "\n")

    import torch
    import vllm
    from vllm import LLM

    t0 = time.perf_counter()
    llm = LLM(
        model=cfg["checkpoint"],
        runner="pooling",
        dtype=cfg["dtype"],
        max_model_len=cfg["max_model_len"],
        max_num_batched_tokens=cfg["max_num_batched_tokens"],
        max_num_seqs=cfg["max_num_seqs"],
        enable_prefix_caching=cfg["prefix_caching"],
        kv_cache_memory_bytes=cfg["kv_cache_bytes"],
        hf_overrides=cfg["hf_overrides"],
        seed=0,
    )
    startup = time.perf_counter() - t0
    from vllm.platforms import current_platform

    vc = llm.llm_engine.vllm_config
    info = {
        "startup_s": startup,
        "vllm": vllm.__version__,
        "vllm_file": vllm.__file__,
        "torch": torch.__version__,
        "python": sys.executable,
        "platform": type(current_platform).__name__,
        "plugin_importable": importlib.util.find_spec("vllm_ascend_rerank") is not None,
        "plugin_module_loaded": any(m.startswith("vllm_ascend_rerank") for m in sys.modules),
        "vllm_plugins_env": os.environ.get("VLLM_PLUGINS"),
        "max_num_batched_tokens": vc.scheduler_config.max_num_batched_tokens,
        "max_num_seqs": vc.scheduler_config.max_num_seqs,
        "prefix_caching": vc.cache_config.enable_prefix_caching,
        "kv_cache_bytes": vc.cache_config.kv_cache_memory_bytes,
        "compilation_mode": str(vc.compilation_config.mode),
        "dtype": str(vc.model_config.dtype),
        "worker": llm.collective_rpc(_worker_info)[0],
    }
    send("ready", info=info)

    template = cfg["template"]
    qs = [q for q, _ in cfg["pairs"]]
    ds = [d for _, d in cfg["pairs"]]
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "run":
            continue
        llm.reset_prefix_cache()
        cpu0 = tree_cpu(os.getpid())
        t0 = time.perf_counter()
        outs = llm.score(qs, ds, chat_template=template, use_tqdm=False)
        wall = time.perf_counter() - t0
        cpu = tree_cpu(os.getpid()) - cpu0
        ids = [list(o.prompt_token_ids) for o in outs]
        send(
            "result",
            wall=wall,
            cpu=cpu,
            scores=[o.outputs.score for o in outs],
            prompt_tokens=[len(i) for i in ids],
            ids_sha1=[hashlib.sha1(json.dumps(i).encode()).hexdigest() for i in ids],
            load=os.getloadavg()[0],
        )
    send("bye", plugin_module_loaded=any(m.startswith("vllm_ascend_rerank") for m in sys.modules))
    out.close()
    llm.llm_engine.engine_core.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description="one side of benchmarks/vs_vllm_cpu.py")
    p.add_argument("--worker", choices=("stock", "plugin"), required=True)  # peer.SIDES
    p.add_argument("--worker-config", required=True)
    p.add_argument("--result-fd", type=int, required=True)
    a = p.parse_args()
    worker(a.worker, a.worker_config, a.result_fd)


if __name__ == "__main__":  # vLLM spawns its engine processes: keep the guard
    main()
