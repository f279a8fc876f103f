"""``npu_mrope`` (plain function; see ``opaque``)."""

from __future__ import annotations

import torch

from . import cann
from ._common import _FLOATS, _check, _count

# The 3-part sections the CANN kernels (aclnnRopeWithSinCosCache and its V2) accept. The
# torch_npu 2.14.0 docs state only the sum rule; the kernel's list comes from the CANN op docs.
_MROPE_SECTIONS = ([16, 24, 24], [24, 20, 20], [8, 12, 12])
_ROTARY_MODES = ("half", "interleave")  # _op_plugin_docs.py names exactly these two


def _mrope_cos_sin(
    cos_sin: torch.Tensor, section: list[int], cache_mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos_sin [3, T, rotary_dim] -> cos, sin [T, rotary_dim / 2]. 'default' concatenates the
    T/H/W sections; 'interleave' (no formula in the 2.14.0 docs; the newer op page's) is
    channel-wise round robin, the layout vLLM uses when section[1] == section[2]."""
    cos, sin = cos_sin.chunk(2, dim=-1)
    if cache_mode == "default":
        return (
            torch.cat([m[i] for i, m in enumerate(cos.split(section, dim=-1))], dim=-1),
            torch.cat([m[i] for i, m in enumerate(sin.split(section, dim=-1))], dim=-1),
        )
    # "interleave": start from the T rows; channels 1, 4, 7, ... below 3 * section[1] take H,
    # channels 2, 5, 8, ... below 3 * section[1] take W (the page bounds both by section[1]).
    out = []
    for t in (cos, sin):
        r = t[0].clone()
        r[..., 1 : section[1] * 3 : 3] = t[1, ..., 1 : section[1] * 3 : 3]
        r[..., 2 : section[1] * 3 : 3] = t[2, ..., 2 : section[1] * 3 : 3]
        out.append(r)
    return out[0], out[1]


def _rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_mode: str
) -> torch.Tensor:
    """x [T, N, head_size] (fp32), cos/sin [T, rotary_dim / 2]."""
    rot = cos.shape[-1] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if rotary_mode == "half":
        x1, x2 = x_rot.chunk(2, dim=-1)
        x_rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = x_rot[..., ::2], x_rot[..., 1::2]
        x_rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return torch.cat((x_rot, x_pass), dim=-1)


def npu_mrope(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    head_size: int,
    *,
    mrope_section: list[int] | None = None,
    rotary_mode: str = "half",
    cache_mode: str = "default",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch_npu.npu_mrope(positions, query, key, cos_sin_cache, head_size, *,
    mrope_section=None, rotary_mode='half', cache_mode='default') -> (Tensor, Tensor)``.

    Source: the torch_npu 2.14.0 wheel (schema: ``csrc/aten/npu_native_functions_by_codegen
    .yaml``; rules: ``_op_plugin_docs.py``; outputs: ``op_plugin/meta/_meta_registrations.py``;
    checked by tests/test_torch_npu_conformance.py). RoPE mode: 1D positions [T], section None
    or [0, 0, 0]. MRoPE mode: positions [3, T], a section the CANN kernel lists, summing to
    rotary_dim / 2. cos_sin_cache [max_seq_len, rotary_dim] holds cos then sin; query/key are
    2D [T, heads * head_size] in the cache's float dtype; views and empty tensors are fine.
    rotary_dim is a multiple of 32 (float16/bfloat16) or 16 (float32). rotary_mode 'half'
    (NeoX) or 'interleave' (GPT-J). cache_mode 'interleave' needs the CANN kernel
    aclnnRopeWithSinCosCacheV2 (the op checks for it; see ``cann``). Returns new tensors.
    """
    op = "npu_mrope"
    _count(op)
    section = list(mrope_section) if mrope_section is not None else [0, 0, 0]
    rope_mode = all(s == 0 for s in section)
    _check(positions.dtype in (torch.int32, torch.int64), op, "positions must be int32/int64")
    _check(rotary_mode in _ROTARY_MODES, op, f"rotary_mode must be one of {_ROTARY_MODES}, "
           f"got {rotary_mode!r}")  # fmt: skip
    _check(cache_mode in ("default", "interleave"), op, f"cache_mode {cache_mode!r}")
    _check(
        cache_mode == "default" or cann.has_aclnn("aclnnRopeWithSinCosCacheV2"),
        op,
        f"cache_mode={cache_mode!r} requires aclnnRopeWithSinCosCacheV2, absent from CANN "
        f"{cann.get_cann_version()}: upgrade CANN or use cache_mode='default'",
    )
    if rope_mode:
        _check(positions.dim() == 1, op, "RoPE mode takes 1D positions [num_tokens]")
        # Not in the 2.14.0 docs; kept because the op has no T/H/W rows to interleave then.
        _check(cache_mode == "default", op, "RoPE mode supports cache_mode='default' only")
    else:
        _check(section in _MROPE_SECTIONS, op, f"mrope_section {section} is not supported")
        _check(
            positions.dim() == 2 and positions.shape[0] == 3,
            op,
            f"MRoPE positions must be [3, num_tokens], got {tuple(positions.shape)}",
        )
    _check(query.dim() == 2 and key.dim() == 2, op, "query and key must be 2D [T, heads*head_size]")
    num_tokens = positions.shape[-1]
    _check(
        query.shape[0] == num_tokens and key.shape[0] == num_tokens,
        op,
        f"query/key rows must equal num_tokens {num_tokens}",
    )
    _check(query.dtype in _FLOATS, op, f"dtype {query.dtype} is not supported")
    _check(
        key.dtype == query.dtype and cos_sin_cache.dtype == query.dtype,
        op,
        "query, key and cos_sin_cache must have the same dtype",
    )
    _check(cos_sin_cache.dim() == 2, op, "cos_sin_cache must be 2D [max_seq_len, rotary_dim]")
    rotary_dim = cos_sin_cache.shape[1]
    align = 16 if query.dtype == torch.float32 else 32
    _check(rotary_dim % align == 0, op, f"rotary_dim {rotary_dim} must be a multiple of {align}")
    _check(rotary_dim <= head_size, op, "rotary_dim must be <= head_size")
    _check(
        query.shape[1] % head_size == 0 and key.shape[1] % head_size == 0,
        op,
        "query/key widths must be multiples of head_size",
    )
    if not rope_mode:
        _check(sum(section) == rotary_dim // 2, op, "sum(mrope_section) must be rotary_dim / 2")
    _check(
        num_tokens == 0 or int(positions.max()) < cos_sin_cache.shape[0],
        op,
        "positions must be < cos_sin_cache.shape[0]",
    )
    cos_sin = cos_sin_cache.float()[positions.long()]
    if rope_mode:
        cos, sin = cos_sin.chunk(2, dim=-1)
    else:
        cos, sin = _mrope_cos_sin(cos_sin, section, cache_mode)
    outs = []
    for x in (query, key):
        heads = x.float().reshape(num_tokens, -1, head_size)  # views are allowed
        outs.append(_rotate(heads, cos, sin, rotary_mode).reshape(x.shape).to(x.dtype))
    return outs[0], outs[1]
