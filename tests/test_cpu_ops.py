"""C++ row kernels of the CPU reference mode against vLLM's own native implementations: same
arithmetic, so fp32 agrees to rounding and bf16 to one unit in the last place.

RMSNorm is the ``vllm_ascend_rerank_cpp`` provider of vLLM's IR ops: what vLLM dispatches to
under the plugin's CPU priority, native for arguments it does not take. SiluAndMul is a
``CustomOp`` replacement: what vLLM instantiates for ``SiluAndMul`` once registered."""

from __future__ import annotations

import pytest
import torch
from vllm import ir

from vllm_ascend_rerank import native_ops

if not native_ops.available():
    pytest.skip(f"C++ op library not built ({native_ops.load_error()})", allow_module_level=True)

from vllm_ascend_rerank.ops import cpu_ops  # noqa: E402

cpu_ops.register()
OURS = ir.ops.rms_norm.impls[cpu_ops.PROVIDER]
OURS_ADD = ir.ops.fused_add_rms_norm.impls[cpu_ops.PROVIDER]
NATIVE = ir.ops.rms_norm.impls["native"]
NATIVE_ADD = ir.ops.fused_add_rms_norm.impls["native"]
TOL = {torch.float32: dict(atol=2e-6, rtol=2e-6), torch.bfloat16: dict(atol=1e-2, rtol=8e-3)}


def rand(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return (3 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(37, 768), (5, 3, 128), (1, 80)])
def test_rms_norm_matches_native(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x, w = rand(*shape, dtype=dtype, seed=0), rand(shape[-1], dtype=dtype, seed=1)
    got = OURS.impl_fn(x, w, 1e-6)
    want = NATIVE.impl_fn(x, w, 1e-6)
    assert got.shape == want.shape and got.dtype == dtype and got.is_contiguous()
    torch.testing.assert_close(got, want, **TOL[dtype])


def test_rms_norm_reads_a_strided_view() -> None:
    # q of a fused qkv row, viewed per head (as Qwen3's q_norm sees it): rows not evenly spaced.
    qkv = rand(9, 6 * 128 + 2 * 3 * 128, dtype=torch.float32, seed=2)
    q = qkv[:, : 6 * 128].view(9, 6, 128)
    assert not q.is_contiguous()
    w = rand(128, dtype=torch.float32, seed=3)
    torch.testing.assert_close(
        OURS.impl_fn(q, w, 1e-6), NATIVE.impl_fn(q, w, 1e-6), **TOL[torch.float32]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_add_rms_norm_matches_native_in_place(dtype: torch.dtype) -> None:
    x, res = rand(23, 256, dtype=dtype, seed=4), rand(23, 256, dtype=dtype, seed=5)
    w = rand(256, dtype=dtype, seed=6)
    want_out, want_res = NATIVE_ADD.impl_fn(x.clone(), res.clone(), w, 1e-6)
    xi, ri = x.clone(), res.clone()
    out, new_res = OURS_ADD.impl_fn(xi, ri, w, 1e-6)
    assert out.data_ptr() == xi.data_ptr() and new_res.data_ptr() == ri.data_ptr()  # in place
    torch.testing.assert_close(new_res, want_res, atol=0, rtol=0)  # one rounding of the sum
    torch.testing.assert_close(out, want_out, **TOL[dtype])


def test_vllm_dispatches_to_the_provider_under_its_priority() -> None:
    x, w = rand(4, 64, dtype=torch.float32, seed=7), rand(64, dtype=torch.float32, seed=8)
    with ir.ops.rms_norm.set_priority([cpu_ops.PROVIDER, "native"]):
        assert ir.ops.rms_norm.dispatch(x, w, 1e-6) is OURS
        # arguments the kernel does not take go to native: no weight, a variance override,
        # a weight of another dtype, a last dim that is not unit-stride
        assert ir.ops.rms_norm.dispatch(x, None, 1e-6) is NATIVE
        assert ir.ops.rms_norm.dispatch(x, w, 1e-6, 32) is NATIVE
        assert ir.ops.rms_norm.dispatch(x, w.to(torch.bfloat16), 1e-6) is NATIVE
        assert ir.ops.rms_norm.dispatch(x.t(), w[:4], 1e-6) is NATIVE


def test_ops_pass_opcheck() -> None:
    ops = torch.ops.vllm_ascend_rerank
    x, w = rand(6, 64, dtype=torch.float32, seed=9), rand(64, dtype=torch.float32, seed=10)
    torch.library.opcheck(ops.rms_norm.default, (x, w, 1e-6))
    torch.library.opcheck(ops.fused_add_rms_norm.default, (x.clone(), x.clone(), w, 1e-6))


def test_rejects_mismatched_weight() -> None:
    x = rand(3, 64, dtype=torch.float32, seed=11)
    with pytest.raises(RuntimeError, match="weight must be contiguous"):
        torch.ops.vllm_ascend_rerank.rms_norm(x, torch.ones(32), 1e-6)


# ---- SiluAndMul ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def silu_layer() -> cpu_ops.CpuSiluAndMul:
    from vllm.config import VllmConfig, set_current_vllm_config

    with set_current_vllm_config(VllmConfig()):  # CustomOps read it when built
        return cpu_ops.CpuSiluAndMul()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(37, 2 * 2304), (3, 4, 256), (1, 2)])
def test_silu_and_mul_matches_native(
    silu_layer: cpu_ops.CpuSiluAndMul, dtype: torch.dtype, shape: tuple[int, ...]
) -> None:
    from vllm.model_executor.layers.activation import SiluAndMul

    x = rand(*shape, dtype=dtype, seed=12)
    ends = torch.tensor([-100.0, 100.0, 0.0, -0.0]).to(dtype)  # exp's range ends
    x.view(-1)[: min(4, x.numel())] = ends[: x.numel()]
    got = torch.ops.vllm_ascend_rerank.silu_and_mul(x)
    want = SiluAndMul.forward_native(x)
    # the layer runs the kernel for float32 and vLLM's native path for bfloat16
    layer_out = silu_layer.forward_oot(x)
    torch.testing.assert_close(layer_out, got if dtype == torch.float32 else want, atol=0, rtol=0)
    assert got.shape == want.shape == (*shape[:-1], shape[-1] // 2) and got.dtype == dtype
    torch.testing.assert_close(got, want, **TOL[dtype])


def test_silu_and_mul_falls_back_for_what_it_does_not_take(
    silu_layer: cpu_ops.CpuSiluAndMul,
) -> None:
    from vllm.model_executor.layers.activation import SiluAndMul

    x = rand(8, 64, dtype=torch.float32, seed=13).t()  # last dim not unit-stride
    torch.testing.assert_close(
        silu_layer.forward_oot(x), SiluAndMul.forward_native(x), atol=0, rtol=0
    )
    with pytest.raises(RuntimeError, match="even size"):
        torch.ops.vllm_ascend_rerank.silu_and_mul(torch.ones(2, 3))
    torch.library.opcheck(
        torch.ops.vllm_ascend_rerank.silu_and_mul.default,
        (rand(5, 64, dtype=torch.float32, seed=14),),
    )
