"""The A/B rounds of one dtype: both sides started and checked (the stock side must be stock),
one untimed pass each, then alternate timed passes with the idle side frozen; the report of
them."""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from vllm_ascend_rerank.prompt import template_path
from vllm_ascend_rerank.serving import HF_OVERRIDES  # the documented flags, one copy

from . import SIDES, log
from .side import Side, side_env

TEMPLATE = Path(template_path())


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
