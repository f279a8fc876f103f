"""Version shims in ``vllm_ascend_rerank.compat``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A daemon thread that vLLM's exit-time finalizer only signals, then which takes a while to finish
# (as EngineCoreOutputQueueThread does while freeing its last tensors). The finalizer that signals
# it is created after the plugin's, as vLLM's client finalizer is.
SCRIPT = textwrap.dedent(
    """
    import sys, threading, time, weakref
    from vllm_ascend_rerank.compat import join_client_threads_at_exit

    join_client_threads_at_exit()
    stop = threading.Event()

    def drain():
        stop.wait()
        time.sleep(0.5)
        sys.stdout.write("thread finished\\n")
        sys.stdout.flush()

    threading.Thread(target=drain, name="{name}", daemon=True).start()

    class Client:
        pass

    client = Client()
    weakref.finalize(client, stop.set)
    print("main done", flush=True)
    """
)


def _run(name: str) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(name=name)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_client_threads_are_joined_at_exit() -> None:
    assert _run("EngineCoreOutputQueueThread") == "main done\nthread finished\n"


def test_other_daemon_threads_are_left_alone() -> None:
    # Only vLLM's client threads are waited for; any other daemon thread dies with the process.
    assert _run("SomeoneElsesThread") == "main done\n"
