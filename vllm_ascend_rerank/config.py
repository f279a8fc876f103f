"""What the plugin changes in vLLM's config, and why (called by the platform).

Anything the device cannot do is switched off or rejected here with a warning that
names the parameter, never silently ignored.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import psutil
import torch
from vllm.logger import init_logger

from vllm_ascend_rerank import embedding, envs

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = init_logger(f"vllm.{__name__}")  # vLLM configures only "vllm.*"

CPU_WORKER = "vllm_ascend_rerank.worker.cpu.RerankCPUWorker"
NPU_WORKER = "vllm_ascend_rerank.worker.npu.RerankNPUWorker"

# Prefill-only pooling: small blocks let prefix caching reuse a shared system
# prompt + query at fine granularity. NPU paged-attention kernels want 128.
CPU_BLOCK_SIZE = 16
NPU_BLOCK_SIZE = 128

# The CPU KV budget never takes more than this share of available RAM.
_CPU_KV_MAX_RAM_FRACTION = 0.25
_MiB = 1 << 20


def update_config(vllm_config: VllmConfig, npu: bool) -> None:
    from vllm.config import CompilationMode
    from vllm.config.compilation import CUDAGraphMode

    if vllm_config.model_config is not None:
        _reranker_head(vllm_config)
        _reranker_inputs(vllm_config)
        embedding.configure(vllm_config)
    parallel = vllm_config.parallel_config
    if parallel.worker_cls == "auto":
        parallel.worker_cls = NPU_WORKER if npu else CPU_WORKER
    if parallel.enable_dbo:
        _off("parallel_config.enable_dbo", "dual-batch overlap needs CUDA streams")
        parallel.enable_dbo = False

    cache = vllm_config.cache_config
    if not cache.user_specified_block_size:
        cache.block_size = NPU_BLOCK_SIZE if npu else CPU_BLOCK_SIZE

    if vllm_config.speculative_config is not None:
        raise ValueError(
            "speculative_config: speculative decoding is not supported by "
            "vllm-ascend-rerank (a reranker only prefills)"
        )

    if npu:
        _npu_graphs(vllm_config)
    else:
        comp = vllm_config.compilation_config
        if comp.mode != CompilationMode.NONE:
            # torch.compile costs minutes on a CPU for no gain at these sizes.
            logger.info("vllm-ascend-rerank: compilation_config.mode %s -> NONE (eager)", comp.mode)
            comp.mode = CompilationMode.NONE
        comp.cudagraph_mode = CUDAGraphMode.NONE
        comp.cudagraph_capture_sizes = []
        vllm_config.scheduler_config.async_scheduling = False
        # vLLM 0.34 warms up JIT kernels with dummy steps; the CPU mode compiles none.
        vllm_config.kernel_config.enable_jit_warmup = False
        _size_cpu_kv_cache(vllm_config)
        # Forking after torch has started its OpenMP pool (e.g. a script that ran
        # a model first) deadlocks the engine process; spawn is always safe.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        _keep_freed_memory()


# glibc gives blocks over 32 MiB (and the heap top) back to the OS on free, so each large
# activation of each step is a fresh mapping that page-faults on first touch: 8-9% of a CPU
# forward at 8192 tokens (measured, benchmarks/RESULTS.md), 10x on one 64 MiB elementwise op.
# Kept in the process instead, like a caching allocator (resident memory stays at its peak).
_GLIBC_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 36), "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}


def _keep_freed_memory() -> None:
    """Read by glibc when the engine process starts (spawned after this); a user's own
    settings (or an LD_PRELOADed allocator) win."""
    if "LD_PRELOAD" in os.environ:
        return
    for name, value in _GLIBC_MALLOC_ENV.items():
        os.environ.setdefault(name, value)


_USER_SIZE_FIELDS = ("prefill_cudagraph_capture_token_sizes", "cudagraph_capture_sizes")
_USER_CAP_FIELDS = ("max_prefill_cudagraph_capture_tokens", "max_cudagraph_capture_size")


def npu_graph_sizes(vllm_config: VllmConfig) -> None:
    """Choose the ACL graph token sizes before vLLM resolves its own grid (the platform's
    ``apply_config_platform_defaults``: after this, vLLM has overwritten what the user set).

    First found wins: ``compilation_config.prefill_cudagraph_capture_token_sizes`` (vLLM 0.34's
    field; a reranker's steps are all prefills), ``compilation_config.cudagraph_capture_sizes``
    (the older field), ``VLLM_ASCEND_RERANK_GRAPH_SIZES``, the plugin's default grid (capped by
    a user's ``max_prefill_cudagraph_capture_tokens`` or ``max_cudagraph_capture_size``). The
    sizes are written back as if the user had set them, so that vLLM's resolution keeps them,
    and logged with where they came from. ``[]`` from the user captures none (eager)."""
    from vllm_ascend_rerank.graphs.acl_graph import GRAPH_SIZES_ENV, capture_sizes, checked_sizes

    if vllm_config.model_config is None or vllm_config.model_config.enforce_eager:
        return
    comp = vllm_config.compilation_config
    budget = vllm_config.scheduler_config.max_num_batched_tokens
    user = {f: getattr(comp, f) for f in _USER_SIZE_FIELDS if getattr(comp, f) is not None}
    env = envs.VLLM_ASCEND_RERANK_GRAPH_SIZES
    if user:
        field, raw = next(iter(user.items()))
        source = f"compilation_config.{field}"
        sizes = checked_sizes(raw, budget, source) if raw else []
        for other, value in list(user.items())[1:]:
            if value is not None and sorted(set(value)) != sizes:
                logger.warning(
                    "vllm-ascend-rerank: compilation_config.%s %s ignored: %s is used",
                    other,
                    value,
                    source,
                )
        if env.strip():
            logger.warning("vllm-ascend-rerank: %s ignored: %s is set", GRAPH_SIZES_ENV, source)
    elif env.strip():
        source = GRAPH_SIZES_ENV
        sizes = capture_sizes(budget, env)
    else:
        caps = {f: getattr(comp, f) for f in _USER_CAP_FIELDS if getattr(comp, f)}
        top = min([budget, *caps.values()])
        sizes = capture_sizes(top)
        source = f"default: powers of two from 16, and {top} (max_num_batched_tokens"
        source += "".join(f", compilation_config.{f}" for f in caps) + ")"
        for f in caps:  # applied; vLLM would reject a cap above the budget
            setattr(comp, f, None)
    comp.prefill_cudagraph_capture_token_sizes = list(sizes)
    # vLLM requires the older field, where set, to agree; it cannot hold [].
    comp.cudagraph_capture_sizes = list(sizes) or None
    # PIECEWISE runs one routine for every batch: no separate decode graphs.
    comp.decode_cudagraph_capture_request_sizes = []
    logger.info(
        "vllm-ascend-rerank: ACL graph token sizes %s (from %s)", sizes or "none, eager", source
    )


def _npu_graphs(vllm_config: VllmConfig) -> None:
    """ACL graphs through vLLM's piecewise path: Dynamo splits the forward at attention
    (eager backend, no Inductor for NPU) and ``ACLGraphWrapper`` captures each piece for
    the token counts ``npu_graph_sizes`` chose. ``enforce_eager`` (or no sizes) keeps it off."""
    from vllm.config import CompilationMode
    from vllm.config.compilation import CUDAGraphMode

    comp = vllm_config.compilation_config
    # npu_graph_sizes' choice; vLLM keeps these as set (its other fields hold its own grid
    # or nothing, e.g. when its optimization level turned graphs off).
    sizes = sorted(comp.prefill_cudagraph_capture_token_sizes or [])
    eager = vllm_config.model_config is not None and vllm_config.model_config.enforce_eager
    if eager or not sizes:
        comp.mode = CompilationMode.NONE
        comp.cudagraph_mode = CUDAGraphMode.NONE
        comp.cudagraph_capture_sizes = []
        comp.max_cudagraph_capture_size = 0
        return
    comp.mode = CompilationMode.VLLM_COMPILE
    comp.backend = "eager"
    # vLLM's quant fusion passes are CUDA kernels: nothing to fuse on Ascend.
    comp.pass_config.fuse_norm_quant = False
    comp.pass_config.fuse_act_quant = False
    comp.cudagraph_mode = CUDAGraphMode.PIECEWISE
    comp.cudagraph_capture_sizes = sizes
    comp.max_cudagraph_capture_size = sizes[-1]
    comp.prefill_cudagraph_capture_token_sizes = sizes
    comp.max_prefill_cudagraph_capture_tokens = sizes[-1]
    comp.decode_cudagraph_capture_request_sizes = []
    comp.max_decode_cudagraph_capture_requests = 0


def _reranker_head(vllm_config: VllmConfig) -> None:
    """Our reranker has one output (the relevance logit); vLLM only derives
    ``num_labels = 1`` for architectures it converts itself, so say it here."""
    from vllm_ascend_rerank.registration import MODEL_ARCH

    hf_config = vllm_config.model_config.hf_config
    if MODEL_ARCH not in (getattr(hf_config, "architectures", None) or []):
        return
    tokens = getattr(hf_config, "classifier_from_token", None)
    if tokens is not None and len(tokens) != 2:
        raise ValueError(
            "hf_overrides.classifier_from_token must be two tokens [false, true], "
            f'e.g. ["no", "yes"]; got {tokens!r}'
        )
    if tokens is None and getattr(hf_config, "num_labels", 1) != 1:
        raise ValueError(
            f"{MODEL_ARCH}: a converted checkpoint must have num_labels 1, got "
            f"{hf_config.num_labels}; for an original checkpoint pass "
            'hf_overrides {"classifier_from_token": ["no", "yes"], '
            '"is_original_qwen3_reranker": true}'
        )
    hf_config.num_labels = 1
    hf_config.get_text_config().num_labels = 1


def _reranker_inputs(vllm_config: VllmConfig) -> None:
    """The official scorer's image/video sizes and frame sampling as defaults, and its
    truncation for ``truncate_prompt_tokens`` (see ``multimodal`` and ``truncation``)."""
    from vllm_ascend_rerank import multimodal, truncation
    from vllm_ascend_rerank.registration import MODEL_ARCH

    if MODEL_ARCH in (getattr(vllm_config.model_config.hf_config, "architectures", None) or []):
        multimodal.apply_defaults(vllm_config)
        truncation.register(vllm_config.model_config)


def _off(param: str, why: str) -> None:
    logger.warning("vllm-ascend-rerank: %s is not supported (%s); turned off.", param, why)


def kv_bytes_per_token(vllm_config: VllmConfig) -> int:
    model = vllm_config.model_config
    parallel = vllm_config.parallel_config
    cache_dtype = vllm_config.cache_config.cache_dtype
    dtype = model.dtype if cache_dtype == "auto" else getattr(torch, cache_dtype)
    elem = torch.empty((), dtype=dtype).element_size()
    layers = model.get_num_layers(parallel)
    return 2 * layers * model.get_num_kv_heads(parallel) * model.get_head_size() * elem


def _size_cpu_kv_cache(vllm_config: VllmConfig) -> None:
    """Size the CPU KV cache from the workload instead of 90% of RAM.

    A reranker's KV lives only while its prompt prefills, plus whatever prefix
    blocks stay cached: room for one longest prompt and two full batches is
    plenty, and it starts in milliseconds instead of zero-filling gigabytes.
    """
    cache = vllm_config.cache_config
    if cache.kv_cache_memory_bytes is not None or vllm_config.model_config is None:
        return
    override_mb = envs.VLLM_ASCEND_RERANK_CPU_KV_CACHE_MB
    if override_mb is not None:
        cache.kv_cache_memory_bytes = override_mb * _MiB
        return
    sched = vllm_config.scheduler_config
    tokens = vllm_config.model_config.max_model_len + 2 * sched.max_num_batched_tokens
    wanted = tokens * kv_bytes_per_token(vllm_config)
    cap = int(psutil.virtual_memory().available * _CPU_KV_MAX_RAM_FRACTION)
    cache.kv_cache_memory_bytes = max(min(wanted, cap), 16 * _MiB)
    logger.info(
        "vllm-ascend-rerank: CPU KV cache %.1f MiB (%d tokens; set "
        "--kv-cache-memory-bytes to change)",
        cache.kv_cache_memory_bytes / _MiB,
        tokens,
    )
