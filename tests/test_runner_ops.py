"""The no-Triton model runner's input ops (worker/runner_ops.py) against per-request loops.

Each expected value is written from the definition of the Triton kernel the op mirrors,
one request and one token at a time, with dummy requests (index -1), a request with no new
tokens, cached context and padding past the step.
"""

from __future__ import annotations

import torch

from vllm_ascend_rerank.worker import runner_ops

PAD = -1
# Batch rows -> request states: row 1 is a dummy, row 2 schedules no tokens this step.
IDX = torch.tensor([3, -1, 0, 1], dtype=torch.int32)
QSL = torch.tensor([0, 4, 6, 6, 9], dtype=torch.int32)
COMPUTED = torch.tensor([2, 0, 0, 5], dtype=torch.int32)  # per state: cached tokens
PREFILL = torch.tensor([8, 3, 0, 6], dtype=torch.int32)  # per state: prompt length


def rows() -> list[tuple[int, int, int]]:
    """(state, first token, token count) per batch row."""
    q = QSL.tolist()
    return [(int(s), q[b], q[b + 1] - q[b]) for b, s in enumerate(IDX.tolist())]


def test_compute_slot_mapping() -> None:
    block_size = 4
    gen = torch.Generator().manual_seed(0)
    table = torch.randint(0, 50, (4, 6), dtype=torch.int32, generator=gen)
    positions = torch.tensor([6, 7, 8, 9, 0, 1, 3, 4, 5, 77, 77], dtype=torch.int64)
    out = torch.full((12,), 999, dtype=torch.int64)
    runner_ops.compute_slot_mapping(table, out, IDX, QSL, positions, block_size, True, PAD)
    want = [PAD] * 12
    for state, start, n in rows():
        for t in range(start, start + n):
            p = int(positions[t])
            block = int(table[state, p // block_size])
            want[t] = PAD if state < 0 else block * block_size + p % block_size
    assert out.tolist() == want
    runner_ops.compute_slot_mapping(table, out, IDX, QSL, positions, block_size, False, PAD)
    assert out.tolist() == [PAD] * 12


def test_gather_block_table() -> None:
    table = torch.arange(1, 25, dtype=torch.int32).view(4, 6)
    num_blocks = torch.tensor([2, 6, 0, 3], dtype=torch.int32)
    idx = torch.tensor([3, 1, 2], dtype=torch.int32)
    out = torch.full((5, 6), 7, dtype=torch.int32)
    runner_ops.gather_block_table(table, out, idx, num_blocks, 4)
    for b, s in enumerate(idx.tolist()):
        k = int(num_blocks[s])
        assert out[b, :k].tolist() == table[s, :k].tolist() and (out[b, k:] == 0).all()
    assert (out[3] == 0).all() and (out[4] == 7).all()  # padding row zeroed, beyond untouched


def test_prepare_pos_seq_lens() -> None:
    idx = IDX.clamp_min(0)  # the runner never asks positions of a dummy row's state -1
    pos = torch.full((10,), -5, dtype=torch.int64)
    seq_lens = torch.full((6,), -5, dtype=torch.int32)
    runner_ops.prepare_pos_seq_lens(idx, QSL, COMPUTED, pos, seq_lens)
    for b, (_, start, n) in enumerate(rows()):
        c = int(COMPUTED[int(idx[b])])
        assert int(seq_lens[b]) == c + n
        assert pos[start : start + n].tolist() == list(range(c, c + n))
    assert seq_lens[4:].tolist() == [0, 0] and pos[9:].tolist() == [-5]


def test_prepare_prefill_inputs() -> None:
    idx = torch.tensor([3, 2, 0, 1], dtype=torch.int32)  # state 2 has finished its prompt
    prefill = torch.tensor([8, 3, 0, 6], dtype=torch.int32)
    computed = torch.tensor([2, 0, 0, 1], dtype=torch.int32)
    tokens = torch.arange(100, 140, dtype=torch.int32).view(4, 10)
    input_ids = torch.full((10,), -3, dtype=torch.int32)
    ahead = torch.full((2, 4), -4, dtype=torch.int32)
    runner_ops.prepare_prefill_inputs(input_ids, ahead, idx, QSL, tokens, prefill, computed)
    want_ids, want_ahead = [-3] * 10, [[-4] * 4 for _ in range(2)]
    q = QSL.tolist()
    for b, s in enumerate(idx.tolist()):
        c, length, start, n = int(computed[s]), int(prefill[s]), q[b], q[b + 1] - q[b]
        if c >= length:
            continue
        want_ids[start : start + n] = tokens[s, c : c + n].tolist()
        for k in range(2):
            p = c + n + k
            want_ahead[k][s] = int(tokens[s, p]) if p < length else 0
    assert input_ids.tolist() == want_ids and ahead.tolist() == want_ahead


def test_prepare_mrope_positions() -> None:
    dims, idx = 3, torch.tensor([3, 2, 0, 1], dtype=torch.int32)
    prefill = torch.tensor([8, 3, 0, 9], dtype=torch.int32)
    computed = torch.tensor([2, 0, 0, 5], dtype=torch.int32)
    prompt = torch.randint(0, 1000, (4 * dims, 12), generator=torch.Generator().manual_seed(1))
    delta = torch.tensor([10, -2, 4, 7], dtype=torch.int32)
    out = torch.full((dims, 10), -9, dtype=torch.int64)
    runner_ops.prepare_mrope_positions(out, prompt, delta, idx, QSL, prefill, computed)
    want = torch.full((dims, 10), -9, dtype=torch.int64)
    q = QSL.tolist()
    for b, s in enumerate(idx.tolist()):
        for i in range(q[b + 1] - q[b]):
            p = int(computed[s]) + i
            for j in range(dims):
                prefilling = int(computed[s]) < int(prefill[s])
                want[j, q[b] + i] = prompt[s * dims + j, p] if prefilling else p + int(delta[s])
    assert torch.equal(out, want)


def test_combine_gives_logits_indices_of_the_last_tokens() -> None:
    idx = torch.tensor([0, 1], dtype=torch.int32)
    qsl = torch.tensor([0, 5, 8], dtype=torch.int32)
    cu = torch.tensor([0, 1, 2], dtype=torch.int32)
    ids = torch.arange(8, dtype=torch.int32)
    got = runner_ops.combine_sampled_and_draft_tokens(
        ids, idx, torch.zeros(2, dtype=torch.int32), qsl, torch.tensor([5, 3]),
        torch.tensor([5, 3]), torch.zeros(2, 1, dtype=torch.int32), cu, 2, 1,
    )  # fmt: skip
    assert got.tolist() == [4, 7] and ids.tolist() == list(range(8))  # prompts untouched


def test_ops_are_registered_in_vllms_namespace() -> None:
    runner_ops.register("CPU")
    out = torch.zeros(3, dtype=torch.int64)
    torch.ops._C.compute_slot_mapping_cpu(
        torch.tensor([[2]], dtype=torch.int32), out, torch.tensor([0], dtype=torch.int32),
        torch.tensor([0, 2], dtype=torch.int32), torch.tensor([1, 2]), 4, True, PAD,
    )  # fmt: skip
    assert out.tolist() == [9, 10, PAD]
