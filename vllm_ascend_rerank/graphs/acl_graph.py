"""ACL graphs (``torch.npu.NPUGraph``) behind vLLM's static-graph hook.

vLLM 0.32 wraps each piece of a piecewise-compiled model (the parts between attention
ops) in the platform's static graph wrapper (``get_static_graph_wrapper_cls``) and drives it
through the forward context: the model runner pads a step's token count up to one of
``compilation_config.cudagraph_capture_sizes`` and sets ``cudagraph_runtime_mode`` and
``batch_descriptor``. The wrapper captures a graph the first time it sees a descriptor,
replays it afterwards, and runs eagerly when the mode does not match or the size has no
graph (a step larger than the largest capture size).

A reranker only prefills: what varies between steps is the number of tokens, up to
``max_num_batched_tokens``, not the number of requests. ``capture_sizes`` picks the graph
sizes for that budget, ``padded_size`` the graph a step runs in; both are plain functions.
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, ClassVar
from unittest.mock import patch

import torch
from vllm.compilation.cuda_graph import CUDAGraphOptions
from vllm.compilation.monitor import validate_cudagraph_capturing_enabled
from vllm.config import CUDAGraphMode, VllmConfig
from vllm.forward_context import BatchDescriptor, get_forward_context, is_forward_context_available
from vllm.logger import init_logger

logger = init_logger(f"vllm.{__name__}")  # vLLM configures only "vllm.*"

# Steps below this many tokens share one graph: a reranker prompt is rarely shorter.
MIN_CAPTURE_SIZE = 16
GRAPH_SIZES_ENV = "VLLM_ASCEND_RERANK_GRAPH_SIZES"


def capture_sizes(max_num_tokens: int, override: str = "") -> list[int]:
    """Token counts to capture graphs for, ascending.

    Default: powers of two from ``MIN_CAPTURE_SIZE`` up to the token budget, plus the budget
    itself so that every step fits a graph (padding costs at most 2x). ``override`` is a comma
    separated list (``VLLM_ASCEND_RERANK_GRAPH_SIZES``); sizes above the budget are dropped.
    """
    if max_num_tokens < 1:
        raise ValueError(f"max_num_tokens must be positive, got {max_num_tokens}")
    if override.strip():
        try:
            sizes = {int(part) for part in override.split(",") if part.strip()}
        except ValueError as exc:
            raise ValueError(
                f"{GRAPH_SIZES_ENV} must be comma separated ints: {override!r}"
            ) from exc
        if any(s < 1 for s in sizes):
            raise ValueError(f"{GRAPH_SIZES_ENV} sizes must be positive: {override!r}")
        too_big = sorted(s for s in sizes if s > max_num_tokens)
        if too_big:
            logger.warning(
                "%s: dropping %s, above the token budget %d",
                GRAPH_SIZES_ENV,
                too_big,
                max_num_tokens,
            )
        return sorted(s for s in sizes if s <= max_num_tokens)
    sizes = set()
    size = MIN_CAPTURE_SIZE
    while size < max_num_tokens:
        sizes.add(size)
        size *= 2
    sizes.add(max_num_tokens)
    return sorted(sizes)


def padded_size(num_tokens: int, sizes: Sequence[int]) -> int | None:
    """The smallest captured size holding ``num_tokens`` (``sizes`` ascending), or None
    when the step is larger than every graph and must run eagerly."""
    i = bisect.bisect_left(sizes, num_tokens)
    if num_tokens < 1 or i == len(sizes):
        return None
    return sizes[i]


@dataclass
class _Graph:
    graph: Any  # torch.npu.NPUGraph
    output: Any  # the captured output tensors: replay rewrites them in place
    replays: int = 0


class ACLGraphWrapper:
    """vLLM's ``AbstractStaticGraphWrapper`` on ``torch.npu.NPUGraph``.

    Inputs must sit at the same addresses on every call of a descriptor (vLLM's runner
    keeps persistent input buffers and passes slices of them). The captured outputs are
    kept alive: each graph owns its output buffer in the shared pool.
    """

    _pool: ClassVar[Any] = None  # one memory pool for all graphs: pieces run one at a time

    def __init__(
        self,
        runnable: Callable[..., Any],
        vllm_config: VllmConfig,
        runtime_mode: CUDAGraphMode,
        cudagraph_options: CUDAGraphOptions | None = None,
        **kwargs: Any,
    ) -> None:
        if runtime_mode == CUDAGraphMode.NONE:
            raise ValueError("ACLGraphWrapper needs a graph runtime mode (PIECEWISE or FULL)")
        self.runnable = runnable
        self.vllm_config = vllm_config
        self.runtime_mode = runtime_mode
        self.options = cudagraph_options or CUDAGraphOptions()
        self.sizes = sorted(vllm_config.compilation_config.cudagraph_capture_sizes or [])
        self.graphs: dict[BatchDescriptor, _Graph] = {}

    def __getattr__(self, key: str) -> Any:
        # Only reached for names the wrapper lacks: expose the runnable's attributes.
        runnable = self.__dict__.get("runnable")
        if runnable is not None and hasattr(runnable, key):
            return getattr(runnable, key)
        raise AttributeError(key)

    def unwrap(self) -> Callable[..., Any]:
        runnable = self.runnable
        return runnable.unwrap() if hasattr(runnable, "unwrap") else runnable

    def clear_graphs(self) -> None:
        self.graphs.clear()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not is_forward_context_available():  # e.g. the vision encoder
            return self.runnable(*args, **kwargs)
        ctx = get_forward_context()
        desc = ctx.batch_descriptor
        if ctx.cudagraph_runtime_mode != self.runtime_mode or desc is None:
            return self.runnable(*args, **kwargs)
        if padded_size(desc.num_tokens, self.sizes) != desc.num_tokens:
            logger.debug("No ACL graph for %d tokens; running eagerly", desc.num_tokens)
            return self.runnable(*args, **kwargs)
        entry = self.graphs.get(desc)
        if entry is None:
            return self._capture(desc, args, kwargs)
        if entry.replays == 0:
            logger.debug("Replaying the ACL graph for %d tokens", desc.num_tokens)
        entry.replays += 1
        entry.graph.replay()
        return entry.output

    def _capture(self, desc: BatchDescriptor, args: tuple, kwargs: dict) -> Any:
        validate_cudagraph_capturing_enabled()
        npu = torch.npu  # type: ignore[attr-defined]  # installed by torch_npu
        if ACLGraphWrapper._pool is None:
            ACLGraphWrapper._pool = npu.graph_pool_handle()
        if self.options.debug_log_enable:
            logger.debug("Capturing an ACL graph (%s) for %s", self.runtime_mode.name, desc)
        graph = npu.NPUGraph()
        with ExitStack() as stack:
            if self.options.gc_disable:
                # Later pieces of one model: skip the collector and cache flush per capture.
                stack.enter_context(patch.object(gc, "collect", lambda *a, **k: 0))
                stack.enter_context(patch.object(npu, "empty_cache", lambda *a, **k: None))
            stack.enter_context(npu.graph(graph, pool=ACLGraphWrapper._pool))
            output = self.runnable(*args, **kwargs)
        self.graphs[desc] = _Graph(graph, output)
        return output
