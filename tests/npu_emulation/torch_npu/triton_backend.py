"""Emulated triton-ascend: the Ascend Triton backend as vLLM sees it, kernels run by Triton's
interpreter on the host.

Installed with the emulated ``npu`` device (``VLLM_ASCEND_RERANK_DEVICE=npu``), i.e. when
``import torch_npu`` runs. The plugin's platform module imports ``device``, which imports
torch_npu while vLLM resolves the platform, so this is in place before
``vllm.triton_utils.importing`` counts Triton's active drivers (it imports ``current_platform``
first) and before any of vLLM's ``@triton.jit`` kernels is defined.

What it emulates (read from triton-ascend's ``third_party/ascend/backend``: ``driver.py``,
``backend_register.py``; not copied):

- ``triton.backends.backends["ascend"]``: triton-ascend ships its backend in-tree as
  ``triton/backends/ascend`` (next to inactive ``nvidia``/``amd``), so Triton and vLLM find one
  active driver, ``NPUDriver``: vLLM's ``HAS_TRITON`` is True and ``triton.runtime.driver.active``
  is this driver.
- ``NPUDriver``'s API: ``get_current_target()`` -> ``GPUTarget("npu", arch, 0)`` (``arch`` from
  ``TRITON_ASCEND_ARCH`` as triton-ascend reads it, else ``Ascend910B3``, the emulated device's
  name); ``get_current_device`` / ``set_current_device`` / ``get_active_torch_device`` /
  ``get_current_stream`` through ``torch.npu``; ``get_device_interface()`` -> ``torch.npu``;
  ``utils.get_device_properties(device)`` -> ``{"max_shared_mem": 1, "num_aicore": n,
  "num_vectorcore": 2n}`` (``n`` = the emulated device's ``cube_core_num``, 20); ``get_benchmarker``
  -> ``triton.testing.do_bench``; ``get_empty_cache_for_benchmark`` (a 192 MiB int32 npu tensor).

What differs from hardware:

- Nothing is compiled. ``TRITON_INTERPRET=1`` is set here, so every ``@triton.jit`` applied
  afterwards is Triton's interpreter: a launch copies each tensor argument's storage to the host
  (``.cpu()``), runs the kernel body with numpy program by program, and copies back
  (``copy_``). Bisheng/AscendNPU-IR code generation, UB (on-chip buffer) limits, ``num_aicore``-
  bounded grids and triton-ascend's own language extensions are not checked here.
- Raw device pointers: kernels that load pointers from a table (vLLM's block-table gather and
  slot-mapping kernels take ``data_ptr()`` tables) dereference emulated device addresses, which
  are host addresses (the emulated allocator is host memory), directly, not through the host
  copies of their arguments. On hardware they are HBM addresses read by the AI core.
- ``is_active`` is True without CANN's ``bisheng`` compiler (triton-ascend asks ``bisheng
  -print-targets`` for ``hiipu64``). The compiler class (``AscendBackend``) exists for Triton's
  backend discovery and refuses to compile.
- Launches are synchronous on the host, like all work on the emulated device; streams are ids.
- Speed: the interpreter runs one program at a time in Python. vLLM's Qwen3-VL vision tower
  interpolates position embeddings with one program per patch (``_bilinear_pos_embed_kernel``,
  16-30 ms each on 2 busy cores, measured): vLLM's start-up profile of the vision encoder runs
  it on the largest image the processor accepts (1,843,200 px = 7,200 patches with the plugin's
  defaults: ~2-4 min; 14 min measured at larger bounds). Emulated runs stay text-only
  (``limit_mm_per_prompt={"image": 0, "video": 0}``) or profile on a small image, as a user
  can: ``--limit-mm-per-prompt '{"image": {"count": 2, "width": 64, "height": 64}}'`` (16
  patches, tests/test_npu_serving.py); requests' own images cost the same per patch.

Each launch is counted by kernel name; the trace (``TORCH_NPU_EMULATION_TRACE``) lists them
under "triton".
"""

from __future__ import annotations

import collections
import functools
import os
import sys
import warnings
from typing import Any

import torch

from ._common import trace_sections

BACKEND = "ascend"  # triton-ascend's in-tree backend directory: triton/backends/ascend
TARGET = "npu"  # GPUTarget.backend of triton-ascend's driver
_ARCH_ENV = "TRITON_ASCEND_ARCH"
_SWITCH_ENV = "TORCH_NPU_EMULATION_TRITON"
_DEFAULT_ARCH = "Ascend910B3"
_BENCH_CACHE_BYTES = 192 * 1024 * 1024  # triton-ascend's L2-sized flush buffer


def install() -> None:
    """Turn the interpreter on and register the backend (idempotent). With
    ``TORCH_NPU_EMULATION_TRITON=0``: nothing, as on a host without triton-ascend."""
    if os.environ.get(_SWITCH_ENV) == "0":
        return
    if "triton.language" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        # triton.language builds its own @jit helpers at import: the interpreter cannot be
        # switched on for them any more, and kernels calling them fail at launch.
        warnings.warn(
            "triton was imported before the emulated triton-ascend switched its interpreter "
            "on: import torch_npu first, or set TRITON_INTERPRET=1",
            stacklevel=2,
        )
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.backends import Backend, backends

    if BACKEND not in backends:
        compiler, driver = _backend_classes()
        backends[BACKEND] = Backend(compiler=compiler, driver=driver)
    _count_launches()


launches: collections.Counter[str] = collections.Counter()


def _count_launches() -> None:
    """Count each interpreted kernel launch by kernel name: the trace's "triton" section
    shows which of vLLM's Triton kernels ran on the emulated device."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run
    if getattr(run, "_npu_emulation", False):
        return

    def counted(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        if not warmup:
            launches[self.fn.__name__] += 1
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    counted._npu_emulation = True  # type: ignore[attr-defined]
    InterpretedFunction.run = counted  # type: ignore[method-assign]
    trace_sections["triton"] = lambda: dict(launches)
    os.register_at_fork(after_in_child=launches.clear)  # a child counts its own launches


@functools.cache
def _backend_classes() -> tuple[type, type]:
    """The compiler and driver classes (built on first use: they subclass Triton's bases)."""
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.backends.driver import DriverBase

    class AscendBackend(BaseBackend):
        """Triton-ascend's compiler, for backend discovery only: kernels are interpreted."""

        @staticmethod
        def supports_target(target: GPUTarget) -> bool:
            return target.backend == TARGET

        def hash(self) -> str:
            return f"{TARGET}-emulation"

        def parse_options(self, options: dict) -> object:
            raise NotImplementedError(_NO_COMPILER)

        def add_stages(self, stages: dict, options: object, language: Any = None) -> None:
            raise NotImplementedError(_NO_COMPILER)

        def load_dialects(self, context: Any) -> None:
            raise NotImplementedError(_NO_COMPILER)

        def get_module_map(self) -> dict:
            return {}

    class NPUUtils:
        """``driver.utils``: device properties as triton-ascend's ``NPUUtils`` reports them."""

        @functools.lru_cache  # noqa: B019 - one instance per driver, as triton-ascend's
        def get_device_properties(self, device: Any) -> dict[str, int]:
            index = device if isinstance(device, int) else None
            cores = int(torch.npu.get_device_properties(index).cube_core_num)  # type: ignore[attr-defined]
            return {"max_shared_mem": 1, "num_aicore": cores, "num_vectorcore": 2 * cores}

        def get_aicore_num(self) -> int:
            return self.get_device_properties("npu")["num_aicore"]

        def get_aivector_core_num(self) -> int:
            return self.get_device_properties("npu")["num_vectorcore"]

        def get_arch(self) -> str:
            return _DEFAULT_ARCH

    class NPUDriver(DriverBase):
        """triton-ascend's driver API over the emulated ``torch.npu``."""

        def __init__(self) -> None:
            self.utils = NPUUtils()
            super().__init__()

        @classmethod
        def is_active(cls) -> bool:
            npu = getattr(torch, "npu", None)
            return bool(npu is not None and npu.is_available())

        def map_python_to_cpp_type(self, ty: str) -> str:
            raise NotImplementedError(_NO_COMPILER)

        def get_current_target(self) -> GPUTarget:
            return GPUTarget(TARGET, os.environ.get(_ARCH_ENV) or self.utils.get_arch(), 0)

        def get_current_device(self) -> int:
            return int(torch.npu.current_device())  # type: ignore[attr-defined]

        def set_current_device(self, device: int) -> None:
            torch.npu.set_device(device)  # type: ignore[attr-defined]

        def get_active_torch_device(self) -> torch.device:
            return torch.device("npu", self.get_current_device())

        def get_current_stream(self, device: int | None = None) -> int:
            return int(torch.npu.current_stream(device).npu_stream)  # type: ignore[attr-defined]

        def get_device_interface(self) -> Any:
            return torch.npu  # type: ignore[attr-defined]

        def get_benchmarker(self) -> Any:
            from triton.testing import do_bench

            return do_bench

        def get_empty_cache_for_benchmark(self) -> torch.Tensor:
            return torch.empty(_BENCH_CACHE_BYTES // 4, dtype=torch.int32, device="npu")

        def clear_cache(self, cache: torch.Tensor) -> None:
            cache.zero_()

    return AscendBackend, NPUDriver


_NO_COMPILER = (
    "the emulated triton-ascend compiles nothing: kernels run in Triton's interpreter "
    "(TRITON_INTERPRET=1, set by the emulation before any @triton.jit)"
)
