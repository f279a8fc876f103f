"""A CPU emulation of the part of ``torch_npu`` that vllm-ascend-rerank calls.

Tests put ``tests/npu_emulation`` on ``sys.path`` (or ``PYTHONPATH``, so that vLLM's engine
subprocesses see it too) to run the plugin's NPU code paths on a machine without an Ascend
NPU. It is NOT torch_npu: it emulates exactly the ops our code calls, on CPU tensors, following
their documented semantics, and it refuses what the documentation says the real op refuses
(layouts, dtypes, shapes, missing arguments), so that a wrong call fails here before it fails
on hardware. Features the real op has but our code never uses raise ``NotImplementedError``.

Source: the torch_npu wheel we pin (pyproject's ``[npu]`` extra, 2.14.0), which publishes each
op's registered schema (``torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml``), its
documented rules (``torch_npu/_op_plugin_docs.py``) and its output shapes/dtypes
(``torch_npu/op_plugin/meta/_meta_registrations.py``). tests/test_torch_npu_conformance.py reads
those from the downloaded wheel and fails on any difference in signatures or outputs. Where the
2.14.0 docs are silent the newer op pages (Ascend op-plugin ``docs/zh/custom_APIs/torch_npu/``)
fill in, as each op's docstring says. NPUGraph: Ascend/pytorch ``docs/en/developer_notes/
framework_feature_guide_pytorch/pytorch_npugraph_desc.md``. ``torch_npu.npu.utils`` reports
the emulated CANN version (``cann``), which gates the ops that need newer aclnn kernels.

Importing this package installs ``torch.npu`` (as the real torch_npu does). By default the
emulated device reports itself unavailable (``torch.npu.is_available() is False``): tensors stay
on the CPU and the plugin keeps running its CPU platform; only the kernels it selects change.
With ``VLLM_ASCEND_RERANK_DEVICE=npu`` in the environment the import switches on the emulated
``npu`` device instead (``device``: PyTorch's PrivateUse1 backend over host memory, built by
``make npu-emulation``; ``hccl``: the collective backend over gloo): ``is_available()`` is True,
tensors live on ``npu:N`` and the plugin runs its NPU platform and worker.

The ops that run inside torch.compile'd model code are registered as opaque torch ops, as the
real ones are, so Dynamo records a call instead of tracing the emulation's Python.

Every op call is counted in ``calls``; with ``TORCH_NPU_EMULATION_TRACE=<path>`` each process
appends its counts to that file (one JSON object per line) at exit, so an end-to-end test can
prove the engine's worker really ran the NPU kernels.

Layout (one module per concern; this ``__init__`` re-exports the public names and installs
``torch.npu``):

- ``_common``: ``NpuOpError``, argument checks, the ``calls`` counter and the exit-time trace.
- ``ops_norm`` (``npu_rms_norm``, ``npu_add_rms_norm``), ``ops_activation`` (``npu_swiglu``),
  ``ops_rope`` (``npu_mrope``), ``ops_cache`` (``npu_scatter_nd_update_``, the paged-KV
  gather), ``ops_attention`` (``npu_fused_infer_attention_score``, ``npu_fusion_attention``).
- ``opaque``: the opaque torch-op registration (with fake impls) of the compiled-code ops.
- ``streams``: ``Stream``, ``Event``, ``current_stream``, ``synchronize``, ...
- ``graphs``: ``NPUGraph``, ``graph``, ``graph_pool_handle`` and the capture dispatch mode.
- ``npu_module``: builds the ``torch.npu`` module.
- ``device`` (the emulated npu device and the device half of ``torch.npu``), ``hccl``.
"""

from __future__ import annotations

import sys
import types

import torch

# Imported in the order the single-file emulation defined them, so the import-time side effects
# (the exit-time trace hook, then the opaque op registration) keep their order.
# isort: off
from ._common import NpuOpError, calls
from .ops_cache import npu_scatter_nd_update_
from .ops_attention import npu_fused_infer_attention_score, npu_fusion_attention
from .opaque import npu_add_rms_norm, npu_mrope, npu_rms_norm, npu_swiglu
from .streams import (
    Event,
    Stream,
    current_stream,
    default_stream,
    set_stream,
    stream,
    synchronize,
)
from .graphs import (
    NPUGraph,
    _weak_ref_tensor,
    graph,
    graph_pool_handle,
    is_current_stream_capturing,
)
from .npu_module import _build_npu_module
from . import cann
from . import device as _device
# isort: on

__version__ = "2.14.0+emulation"
__emulation__ = True

__all__ = [
    "Event",
    "NPUGraph",
    "NpuOpError",
    "Stream",
    "calls",
    "current_stream",
    "default_stream",
    "graph",
    "graph_pool_handle",
    "is_current_stream_capturing",
    "npu",
    "npu_add_rms_norm",
    "npu_fused_infer_attention_score",
    "npu_fusion_attention",
    "npu_mrope",
    "npu_rms_norm",
    "npu_scatter_nd_update_",
    "npu_swiglu",
    "set_stream",
    "stream",
    "synchronize",
]

npu = _build_npu_module()
sys.modules["torch_npu.npu"] = npu
npu.utils = cann.utils  # type: ignore[attr-defined]
sys.modules["torch_npu.npu.utils"] = cann.utils
# torch_npu._C: the helpers of the real extension module that the plugin calls.
_C = types.ModuleType("torch_npu._C")
_C._weak_ref_tensor = _weak_ref_tensor  # type: ignore[attr-defined]
sys.modules["torch_npu._C"] = _C
if _device.enabled():  # VLLM_ASCEND_RERANK_DEVICE=npu: the emulated npu device (device.py)
    _device.install(npu)
    from . import triton_backend  # triton-ascend as vLLM sees it (before vLLM imports triton)

    triton_backend.install()
elif not hasattr(torch, "npu"):  # as the real torch_npu: torch.npu is its npu module
    torch.npu = npu  # type: ignore[attr-defined]
    sys.modules.setdefault("torch.npu", npu)
