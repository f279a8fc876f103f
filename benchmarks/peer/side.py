"""One side's process: started under its own interpreter with its own environment, driven over
stdin, frozen while the other side is timed, its process tree's CPU seconds counted."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

from .worker import tree, tree_cpu

# Run as a script, not through this package: see worker.py's docstring.
WORKER = Path(__file__).resolve().with_name("worker.py")
# The plugin's engine default (vllm_ascend_rerank.config._GLIBC_MALLOC_ENV), given to both.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 36), "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}


class Side:
    def __init__(self, name: str, python: str, config: dict, env: dict, log_path: Path) -> None:
        self.name = name
        cfg_path = log_path.with_suffix(".json")
        cfg_path.write_text(json.dumps(config))
        r, w = os.pipe()
        self.log_path = log_path
        self.log_file = open(log_path, "w")  # noqa: SIM115 (closed in close())
        cmd = [python, str(WORKER), "--worker", name]
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
        return tree_cpu(self.proc.pid)

    def freeze(self, stop: bool) -> None:
        """SIGSTOP / SIGCONT this side's whole process tree, so that an idle side's pollers
        and spinning threads take nothing from the side being timed."""
        import psutil

        for p in tree(self.proc.pid):
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
        # Its legacy variable takes whole GiB; same as kv_cache_memory_bytes.
        if kv_gib == int(kv_gib):
            env["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_gib))
    else:
        # Only the plugin's own variables, if the user set any (e.g. ..._CPU_LINEAR=torch).
        env.update({k: v for k, v in os.environ.items() if k.startswith("VLLM_ASCEND_RERANK_")})
    return env
