"""CustomOp registrations: NPU kernels for vLLM layers, native torch as fallback."""

from __future__ import annotations


def register_custom_ops() -> None:
    """Swap vLLM layer classes for ours where an NPU kernel exists.

    Only done when NPU kernels are selected (an NPU, or the test emulation);
    otherwise vLLM's own pure-torch ``forward_native`` paths run unchanged.
    """
    from vllm_ascend_rerank import device, envs

    wanted = envs.VLLM_ASCEND_RERANK_OPS
    if wanted not in ("auto", "npu", "native"):
        raise ValueError(f"VLLM_ASCEND_RERANK_OPS must be auto, npu or native; got {wanted!r}")
    if wanted == "native" or (wanted == "auto" and not device.is_npu()):
        return
    from vllm_ascend_rerank.ops import npu_ops

    npu_ops.register()
