"""CustomOp registrations: NPU kernels for vLLM layers, native torch as fallback."""

from __future__ import annotations


def register_custom_ops() -> None:
    """Swap vLLM layer classes for ours where a kernel exists.

    NPU kernels when they are selected (an NPU, or the test emulation); in the CPU
    reference mode the C++ library's (``cpu_ops``) when it is built; otherwise vLLM's own
    pure-torch ``forward_native`` paths run unchanged.
    """
    from vllm_ascend_rerank import device, envs
    from vllm_ascend_rerank.ops import cpu_ops

    wanted = envs.VLLM_ASCEND_RERANK_OPS
    if wanted not in ("auto", "npu", "native"):
        raise ValueError(f"VLLM_ASCEND_RERANK_OPS must be auto, npu or native; got {wanted!r}")
    cpu_ops.register()  # IR-op providers: inert unless the platform's priority names them
    if cpu_ops.wanted():
        cpu_ops.register_layers()
    if wanted == "native" or (wanted == "auto" and not device.is_npu()):
        return
    from vllm_ascend_rerank.ops import npu_ops

    npu_ops.register()
