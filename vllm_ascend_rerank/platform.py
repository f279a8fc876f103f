"""The platform vLLM drives: wiring only (device facts, config checks, class paths).

One class serves both modes. Its device facts come from ``device.facts()`` when
this module is imported: the NPU's on an Ascend host, the CPU reference mode's
elsewhere (or when ``VLLM_ASCEND_RERANK_DEVICE=cpu``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.logger import init_logger
from vllm.platforms.interface import Platform, PlatformEnum

from vllm_ascend_rerank import device, envs

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.config.kernel import IrOpPriorityConfig
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig

logger = init_logger(f"vllm.{__name__}")  # vLLM configures only "vllm.*"

_FACTS = device.facts()
# Must match RerankAttentionBackend.get_name() (not imported: this module is loaded
# while vllm.config is still initialising).
BACKEND_NAME = "CUSTOM"
_GRAPH_WRAPPER_CLS = "vllm_ascend_rerank.graphs.acl_graph.ACLGraphWrapper"


class AscendRerankPlatform(Platform):
    _enum = PlatformEnum.OOT
    device_name: str = _FACTS.device_name
    device_type: str = _FACTS.device_type
    dispatch_key: str = _FACTS.dispatch_key
    dist_backend: str = _FACTS.dist_backend
    device_control_env_var: str = _FACTS.device_control_env_var
    ray_device_key: str = _FACTS.ray_device_key
    simple_compile_backend: str = "eager"
    supported_quantization: list[str] = []

    @property
    def supported_dtypes(self) -> list[torch.dtype]:
        # vLLM's "auto" dtype takes fp16 for pooling models when listed. On a CPU fp16
        # matmuls are slow and lossy: offer bf16 (fast with AVX512-BF16) and fp32.
        if device.is_npu():
            return [torch.bfloat16, torch.float16, torch.float32]
        if torch.cpu._is_avx512_bf16_supported():
            return [torch.bfloat16, torch.float32]
        return [torch.float32, torch.bfloat16]

    @classmethod
    def is_npu(cls) -> bool:
        return device.is_npu()

    # ---- device facts -------------------------------------------------------
    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return device.device_name(device_id)

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        return device.total_memory(device_id)

    @classmethod
    def set_device(cls, dev: torch.device) -> None:
        device.set_device(dev)

    @classmethod
    def manual_seed_all(cls, seed: int) -> None:
        device.manual_seed_all(seed)

    @classmethod
    def get_current_memory_usage(cls, dev: torch.types.Device | None = None) -> float:
        return device.current_memory_usage(dev)

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        # Pinned host memory only helps host->NPU copies.
        return device.is_npu()

    @classmethod
    def inference_mode(cls) -> torch.inference_mode:
        return torch.inference_mode()

    @classmethod
    def check_if_supports_dtype(cls, dtype: torch.dtype) -> None:
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"dtype {dtype} is not supported by vllm-ascend-rerank")

    @classmethod
    def num_compute_units(cls, device_id: int = 0) -> int:
        return torch.get_num_threads()

    @classmethod
    def import_kernels(cls) -> None:
        # No vllm._C here: the model runner's input-preparation ops come from the plugin
        # (vLLM calls this before it first needs them); attention, norms and the rest are
        # registered by the general plugin.
        from vllm_ascend_rerank.worker import runner_ops

        runner_ops.register(cls.dispatch_key)

    @classmethod
    def uses_standalone_cpu_model_runner(cls) -> bool:
        # The CPU mode runs vLLM's no-Triton runner (inputs prepared by ``runner_ops``). An
        # NPU runs vLLM's Triton model runner (triton-ascend); that runner is host-only.
        return not device.is_npu()

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        if device.is_npu():
            return "vllm_ascend_rerank.distributed.NpuCommunicator"
        return "vllm.distributed.device_communicators.cpu_communicator.CpuCommunicator"

    @classmethod
    def check_runner_kv_caches_multi_layer(cls) -> None:
        return

    @classmethod
    def opaque_attention_op(cls) -> bool:
        return True

    @classmethod
    def use_all_gather(cls) -> bool:
        return True

    @classmethod
    def pre_register_and_update(cls, parser: FlexibleArgumentParser | None = None) -> None:
        # vllm serve: bad-media errors name the document (middleware.py); the scoring
        # routes' key and body limit (guard.py), added last so it runs first. --middleware
        # is registered before this hook runs; a user's values are appended to this default.
        if parser is None:
            return
        from vllm_ascend_rerank import guard, middleware

        current = parser.get_default("middleware")
        if isinstance(current, list):
            ours = [p for p in (middleware.PATH, guard.PATH) if p not in current]
            parser.set_defaults(middleware=[*current, *ours])

    @classmethod
    def validate_request(cls, processed_inputs: Any, params: Any) -> None:
        # LLM.score without chat_template= drops a per-request instruction: an error instead
        # (vllm serve: the middleware answers it before the request is parsed).
        from vllm_ascend_rerank.prompt import check_instruction_applied

        check_instruction_applied(processed_inputs, params)

    # ---- kernels and backends ----------------------------------------------
    @classmethod
    def get_default_ir_op_priority(cls, vllm_config: VllmConfig) -> IrOpPriorityConfig:
        from vllm.config.kernel import IrOpPriorityConfig

        from vllm_ascend_rerank.ops import cpu_ops

        if not cpu_ops.wanted():
            return super().get_default_ir_op_priority(vllm_config)
        cpu_ops.register()  # the priority may only name registered providers
        ours = [cpu_ops.PROVIDER, "native"]
        return IrOpPriorityConfig.with_default(["native"], rms_norm=ours, fused_add_rms_norm=ours)

    @classmethod
    def get_attn_backend_cls(
        cls,
        selected_backend: AttentionBackendEnum | None,
        attn_selector_config: AttentionSelectorConfig,
        num_heads: int | None = None,
    ) -> str:
        if attn_selector_config.use_mla or attn_selector_config.use_sparse:
            raise NotImplementedError(
                "vllm-ascend-rerank supports standard (non-MLA) attention only"
            )
        if selected_backend is not None and selected_backend.name != BACKEND_NAME:
            logger.warning(
                "Attention backend %s is not available on %s; using the plugin's own.",
                selected_backend.name,
                cls.device_name,
            )
        return "vllm_ascend_rerank.attention.backend.RerankAttentionBackend"

    @classmethod
    def support_static_graph_mode(cls) -> bool:
        return device.is_npu()

    @classmethod
    def get_static_graph_wrapper_cls(cls) -> str:
        return _GRAPH_WRAPPER_CLS

    # ---- configuration -----------------------------------------------------
    @classmethod
    def validate_environ(cls, hard_fail: bool) -> None:
        """vLLM 0.34's check of ``VLLM_*`` variables (removed ones are errors, unknown ones
        warnings or errors), knowing the plugin's own (envs.py) too."""
        import os

        from vllm import envs as vllm_envs

        known = set(vllm_envs.environment_variables) | set(dir(envs))
        for name, value in os.environ.items():
            if name == "VLLM_USE_V2_MODEL_RUNNER" and value != "1":
                raise ValueError(
                    f"VLLM_USE_V2_MODEL_RUNNER={value} is no longer supported: vLLM 0.34 has "
                    "only model runner V2. Unset this variable."
                )
            if hint := vllm_envs.removed_environment_variables.get(name):
                raise ValueError(f"{name} has been removed. {hint}")
            if name.startswith("VLLM_") and name not in known | {"VLLM_USE_V2_MODEL_RUNNER"}:
                if hard_fail:
                    raise ValueError(f"Unknown vLLM environment variable detected: {name}")
                logger.warning("Unknown vLLM environment variable detected: %s", name)

    @classmethod
    def apply_config_platform_defaults(cls, vllm_config: VllmConfig) -> None:
        # Runs before vLLM resolves its graph sizes: the last point where the user's are seen.
        if device.is_npu():
            from vllm_ascend_rerank.config import npu_graph_sizes

            npu_graph_sizes(vllm_config)

    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        from vllm_ascend_rerank.config import update_config

        if device.is_npu():
            from vllm.triton_utils import HAS_TRITON

            if not HAS_TRITON:  # else vLLM's worker fails later, naming no package
                raise RuntimeError(
                    "vllm-ascend-rerank on an NPU runs vLLM 0.34's model runner, whose input "
                    "preparation is Triton kernels: install triton-ascend (the [npu] extra) "
                    "so that Triton finds exactly one active driver, the NPU's."
                )
        update_config(vllm_config, npu=device.is_npu())
        logger.info_once(
            "vllm-ascend-rerank: running on %s",
            "Ascend NPU"
            if device.is_npu()
            else "CPU (reference mode: pure-torch kernels, no NPU found or "
            f"VLLM_ASCEND_RERANK_DEVICE={envs.VLLM_ASCEND_RERANK_DEVICE})",
        )
