"""``torch_npu.npu.utils``: the CANN version the emulated torch_npu runs on.

torch_npu 2.14.0 (``torch_npu/npu/utils.py``) exposes ``get_cann_version(module="CANN")`` and
``_is_gte_cann_version(version, module="CANN")``; ops that need a newer aclnn kernel check for
it at run time (``npu_mrope`` with ``cache_mode != 'default'`` needs
``aclnnRopeWithSinCosCacheV2``). The emulation reports ``TORCH_NPU_EMULATION_CANN_VERSION``
(default 9.1.0, the CANN the 2.14.0 wheel's METADATA tells users to install), so a test can
play an older CANN and see the plugin's fallbacks.
"""

from __future__ import annotations

import os
import re
import types

DEFAULT_CANN = "9.1.0"
# First CANN with each aclnn kernel an emulated op checks for (vllm-ascend's
# ops/rotary_embedding.py notes interleaved M-RoPE "need cann update in 8.5.0").
KERNEL_SINCE = {"aclnnRopeWithSinCosCacheV2": "8.5.0"}


def get_cann_version(module: str = "CANN") -> str:
    return os.environ.get("TORCH_NPU_EMULATION_CANN_VERSION", DEFAULT_CANN)


def _version_key(version: str) -> list[tuple[int, int, int]]:
    """CANN versions: ``8.5.0``, ``8.3.RC1`` (before ``8.3.0``), ``8.5.0.alpha003`` (before
    ``8.5.0``). Numbers sort above pre-release tags; a missing part counts as a release 0."""
    key = []
    for part in version.split("."):
        if part.isdigit():
            key.append((1, int(part), 0))
            continue
        m = re.fullmatch(r"(alpha|beta|rc)(\d*)", part, flags=re.IGNORECASE)
        if m is None:
            raise ValueError(f"unrecognised CANN version {version!r}")
        stage = ("alpha", "beta", "rc").index(m.group(1).lower())
        key.append((0, stage, int(m.group(2) or 0)))
    return key


def _is_gte_cann_version(version: str, module: str = "CANN") -> bool:
    have, want = _version_key(get_cann_version(module)), _version_key(version)
    width = max(len(have), len(want))
    have += [(1, 0, 0)] * (width - len(have))
    want += [(1, 0, 0)] * (width - len(want))
    return have >= want


def has_aclnn(kernel: str) -> bool:
    """Whether the emulated CANN ships an aclnn kernel (``check_aclnn_kernel_available``)."""
    return _is_gte_cann_version(KERNEL_SINCE[kernel])


utils = types.ModuleType("torch_npu.npu.utils")
utils.get_cann_version = get_cann_version  # type: ignore[attr-defined]
utils._is_gte_cann_version = _is_gte_cann_version  # type: ignore[attr-defined]
