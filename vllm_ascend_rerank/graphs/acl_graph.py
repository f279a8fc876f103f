"""ACL graphs (``torch.npu.NPUGraph``) behind vLLM's static-graph hook.

vLLM wraps each piece of a piecewise-compiled model (the parts between attention ops) in
the platform's static graph wrapper (``get_static_graph_wrapper_cls``) and drives it through
the forward context: the model runner pads a step's token count up to a captured size and
sets ``cudagraph_runtime_mode`` and ``batch_descriptor`` (``CUDAGraphMode.NONE`` for a step
larger than every graph). The wrapper captures a graph the first time it sees a descriptor,
replays it afterwards, and runs eagerly when the mode does not match or the size has no
graph.

Memory (as vLLM's ``CUDAGraphWrapper`` and vllm-ascend's ``ACLGraphWrapper``): every graph
allocates from one pool, and the wrapper keeps only *weak* references to what a capture
returns (``torch_npu._C._weak_ref_tensor``: same memory, no ownership). Once the caller drops
a capture's output, its blocks go back to the pool, where the next (smaller) size reuses
them; replay rewrites the same addresses. Holding the outputs strongly would keep one set
of outputs alive per captured size: capture memory would grow with the sum over sizes
instead of the largest one.

A reranker only prefills: what varies between steps is the number of tokens, up to
``max_num_batched_tokens``, not the number of requests. ``capture_sizes`` picks the graph
sizes for that budget, ``padded_size`` the graph a step runs in; both are plain functions.
"""

from __future__ import annotations

import bisect
import collections
import gc
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any
from unittest.mock import patch

import torch
from vllm.compilation.counter import compilation_counter
from vllm.compilation.cuda_graph import CUDAGraphEntry, CUDAGraphOptions, CUDAGraphWrapper
from vllm.config import CUDAGraphMode, VllmConfig
from vllm.forward_context import BatchDescriptor, get_forward_context, is_forward_context_available
from vllm.logger import init_logger
from vllm.sequence import IntermediateTensors

from vllm_ascend_rerank import device

logger = init_logger(f"vllm.{__name__}")  # vLLM configures only "vllm.*"

# Steps below this many tokens share one graph: a reranker prompt is rarely shorter.
MIN_CAPTURE_SIZE = 16
GRAPH_SIZES_ENV = "VLLM_ASCEND_RERANK_GRAPH_SIZES"


def capture_sizes(max_num_tokens: int, override: str = "") -> list[int]:
    """Token counts to capture graphs for, ascending.

    Default: powers of two from ``MIN_CAPTURE_SIZE`` up to the token budget, plus the budget
    itself so that every step fits a graph (padding costs at most 2x). ``override`` is a comma
    separated list (``VLLM_ASCEND_RERANK_GRAPH_SIZES``), checked by ``checked_sizes``.
    """
    if max_num_tokens < 1:
        raise ValueError(f"max_num_tokens must be positive, got {max_num_tokens}")
    if override.strip():
        try:
            parts = [int(part) for part in override.split(",") if part.strip()]
        except ValueError as exc:
            raise ValueError(
                f"{GRAPH_SIZES_ENV} must be comma separated ints: {override!r}"
            ) from exc
        return checked_sizes(parts, max_num_tokens, GRAPH_SIZES_ENV)
    sizes = set()
    size = MIN_CAPTURE_SIZE
    while size < max_num_tokens:
        sizes.add(size)
        size *= 2
    sizes.add(max_num_tokens)
    return sorted(sizes)


def checked_sizes(sizes: Sequence[object], max_num_tokens: int, name: str) -> list[int]:
    """A user's capture sizes (``name`` says where they were set), ascending, without
    duplicates. Each must be a positive int. Sizes above the token budget could never be
    used (no step is larger): they are dropped with a warning, as vLLM drops its own; a list
    with nothing left is an error, since the user asked for graphs."""
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 1]
    if bad:
        raise ValueError(f"{name}: capture sizes must be positive ints, got {bad!r}")
    ints = {int(s) for s in sizes}  # type: ignore[call-overload]  # checked above
    kept = sorted(s for s in ints if s <= max_num_tokens)
    too_big = sorted(ints - set(kept))
    if too_big and not kept:
        raise ValueError(
            f"{name}: every capture size {too_big} is above max_num_batched_tokens="
            f"{max_num_tokens}; no step is that large. Use sizes up to {max_num_tokens} "
            "or raise --max-num-batched-tokens."
        )
    if too_big:
        logger.warning(
            "%s: dropping capture sizes %s, above max_num_batched_tokens=%d (no step is "
            "that large)",
            name,
            too_big,
            max_num_tokens,
        )
    return kept


def padded_size(num_tokens: int, sizes: Sequence[int]) -> int | None:
    """The smallest captured size holding ``num_tokens`` (``sizes`` ascending), or None
    when the step is larger than every graph and must run eagerly."""
    i = bisect.bisect_left(sizes, num_tokens)
    if num_tokens < 1 or i == len(sizes):
        return None
    return sizes[i]


def weak_ref_tensors(value: Any) -> Any:
    """``value`` with every tensor replaced by a non-owning alias of its memory (tensors,
    lists/tuples of them, ``IntermediateTensors``; anything else as is)."""
    if isinstance(value, torch.Tensor):
        # Empty tensors own no memory (and a data pointer of 0 cannot be aliased).
        return device.weak_ref_tensor(value) if value.numel() > 0 else value
    if isinstance(value, (list, tuple)):
        return type(value)(weak_ref_tensors(v) for v in value)
    if isinstance(value, IntermediateTensors):
        return IntermediateTensors({k: weak_ref_tensors(v) for k, v in value.tensors.items()})
    return value


class ACLGraphWrapper(CUDAGraphWrapper):
    """vLLM's ``CUDAGraphWrapper`` capturing and replaying ``torch.npu.NPUGraph`` instead.

    Only the capture/replay step differs; the rest is vLLM's, so vLLM's own bookkeeping
    reaches these wrappers too: its memory profiling points ``graph_pool`` at a throwaway
    pool and drops the profiling graphs afterwards (``CUDAGraphWrapper._all_instances``).

    Inputs must sit at the same addresses on every call of a descriptor (vLLM's runner
    keeps persistent input buffers and passes slices of them; checked at replay when
    vLLM logs at DEBUG). Outputs returned by a replay alias graph memory: valid until
    the next replay of a graph of the shared pool, as with vLLM's CUDA graphs.
    """

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
        super().__init__(runnable, vllm_config, runtime_mode, cudagraph_options)
        # After config resolution this lists the token count of every graph vLLM captures.
        self.sizes = sorted(vllm_config.compilation_config.cudagraph_capture_sizes or [])
        self.replays: collections.Counter[int] = collections.Counter()  # by token count

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not is_forward_context_available():  # e.g. the vision encoder
            return self.runnable(*args, **kwargs)
        ctx = get_forward_context()
        desc = ctx.batch_descriptor
        if ctx.cudagraph_runtime_mode != self.runtime_mode or desc is None:
            return self.runnable(*args, **kwargs)
        if desc.num_tokens not in self.sizes:  # the runner pads to a size, or goes eager
            logger.debug("No ACL graph for %d tokens; running eagerly", desc.num_tokens)
            return self.runnable(*args, **kwargs)
        entry = self.concrete_cudagraph_entries.get(desc)
        if entry is None:
            return self._capture(desc, args, kwargs)
        if self.is_debugging_mode:
            addresses = [x.data_ptr() for x in args if isinstance(x, torch.Tensor)]
            if addresses != entry.input_addresses:
                raise RuntimeError(
                    f"ACL graph for {desc}: inputs moved since capture "
                    f"({entry.input_addresses} -> {addresses})"
                )
        self.replays[desc.num_tokens] += 1
        entry.cudagraph.replay()
        return entry.output

    def _capture(self, desc: BatchDescriptor, args: tuple, kwargs: dict) -> Any:
        npu = torch.npu  # type: ignore[attr-defined]  # installed by torch_npu
        if self.cudagraph_options.debug_log_enable:
            logger.debug("Capturing an ACL graph (%s) for %s", self.runtime_mode.name, desc)
        graph = npu.NPUGraph()
        with ExitStack() as stack:
            if self.cudagraph_options.gc_disable:
                # Later pieces of one forward: torch.npu.graph() would collect garbage and
                # flush the allocator's cache once per piece (slow); the first piece did.
                stack.enter_context(patch.object(gc, "collect", lambda *a, **k: 0))
                stack.enter_context(patch.object(npu, "empty_cache", lambda *a, **k: None))
            stack.enter_context(npu.graph(graph, pool=self.graph_pool))
            output = self.runnable(*args, **kwargs)
            if self.cudagraph_options.weak_ref_output:
                # The last piece's output feeds no other graph: drop it before the capture
                # ends so that its blocks are free in the pool for the next size.
                output = weak_ref_tensors(output)
        self.concrete_cudagraph_entries[desc] = CUDAGraphEntry(
            batch_descriptor=desc,
            cudagraph=graph,
            output=weak_ref_tensors(output),
            input_addresses=[x.data_ptr() for x in args if isinstance(x, torch.Tensor)],
        )
        compilation_counter.num_cudagraph_captured += 1
        # The caller gets the owning output (what it holds keeps the blocks in use while the
        # next pieces capture); the entry keeps a weak one, freed when the caller drops it.
        return output
