"""Version shims for the pinned stack (vLLM 0.34, transformers 5.16-5.22), each saying when
it can go."""

from __future__ import annotations

import functools


@functools.cache
def qwen3_vl_video_kwargs() -> dict[str, object]:
    """Extra ``videos_kwargs`` for transformers' Qwen3-VL video processor.

    transformers 5.19 warns about its per-frame pixel cap on the first video unless
    ``cap_pixels_per_frame`` is given. The plugin resizes frames itself and calls the
    processor with ``do_resize=False``, so the cap never applies: say so, when the
    argument exists. Remove once the transformers floor is >= 5.22 (argument gone).
    """
    from transformers.models.qwen3_vl import Qwen3VLVideoProcessor

    valid = getattr(Qwen3VLVideoProcessor, "valid_kwargs", None)
    if "cap_pixels_per_frame" in getattr(valid, "__annotations__", {}):
        return {"cap_pixels_per_frame": False}
    return {}


# vLLM's offline client (SyncMPClient, 0.32 to 0.34 at least) decodes engine outputs in daemon
# threads. At interpreter exit its finalizer only *signals* them; a thread still freeing its
# last pooled tensor when Py_FinalizeEx starts is killed mid-free and the process aborts
# ("terminate called without an active exception", exit -6), about one run in four on 2 cores.
_CLIENT_THREADS = ("EngineCoreOutputQueueThread", "MPClientEngineMonitor")
_JOIN_BUDGET_S = 5.0


class _ExitSentinel:
    pass


_EXIT_SENTINEL = _ExitSentinel()


def _join_client_threads() -> None:
    import threading
    import time

    deadline = time.monotonic() + _JOIN_BUDGET_S
    for thread in threading.enumerate():
        if thread.daemon and thread.name in _CLIENT_THREADS:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


@functools.cache
def join_client_threads_at_exit() -> None:
    """Join vLLM's client threads after vLLM's own exit-time shutdown has signalled them.

    At exit, ``weakref.finalize`` callbacks run in reverse order of creation (documented in
    the ``weakref`` module), so a finalizer made here, before the engine client exists, runs
    after the client's shutdown finalizer. Remove once vLLM joins these threads itself.
    """
    import weakref

    weakref.finalize(_EXIT_SENTINEL, _join_client_threads)


_UNKNOWN = "?"  # a server whose chat template cannot be read


def served_chat_template(scope: dict) -> str | None:
    """The ``--chat-template`` of the ``vllm serve`` that an ASGI request reached (None: not
    given), read from the app state vLLM 0.34 keeps (``app.state.args``); ``"?"`` where it
    cannot be read. Remove once vLLM passes request arguments to ``get_score_template``."""
    args = getattr(getattr(scope.get("app"), "state", None), "args", None)
    if args is None or not hasattr(args, "chat_template"):
        return _UNKNOWN
    return args.chat_template
