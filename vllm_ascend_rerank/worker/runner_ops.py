"""The input-preparation ops of vLLM 0.34's no-Triton model runner, in torch.

vLLM 0.34 removed its V1 GPU model runner; without Triton the only runner left is
``StandaloneCPUModelRunner`` (``vllm/v1/worker/cpu``), which prepares each step through
``torch.ops._C.<name>_cpu`` ops compiled into vLLM's CPU wheel, not into the CUDA wheel we
install. Each op here follows the Triton kernel it mirrors (named per function, in
``vllm/v1/worker/gpu``), batched over tokens instead of looped per request. Sampling ops
are absent: a pooling model never samples.
"""

from __future__ import annotations

import functools

import torch

_OPS: dict[str, str] = {
    "gather_block_table_cpu": "(Tensor block_table, Tensor(a!) output, Tensor idx_mapping, "
    "Tensor num_blocks, int num_reqs_padded) -> ()",
    "compute_slot_mapping_cpu": "(Tensor block_table, Tensor(a!) slot_mapping, "
    "Tensor idx_mapping, Tensor query_start_loc, Tensor positions, int block_size, "
    "bool mapping_enabled, int pad_slot_id) -> ()",
    "prepare_prefill_inputs_cpu": "(Tensor(a!) input_ids, Tensor(b!) next_prefill_tokens, "
    "Tensor idx_mapping, Tensor query_start_loc, Tensor all_token_ids, Tensor prefill_len, "
    "Tensor num_computed_tokens) -> ()",
    "prepare_pos_seq_lens_cpu": "(Tensor idx_mapping, Tensor query_start_loc, "
    "Tensor num_computed_tokens, Tensor(a!) pos, Tensor(b!) seq_lens) -> ()",
    "prepare_mrope_positions_cpu": "(Tensor(a!) positions, Tensor prefill_positions, "
    "Tensor prefill_delta, Tensor idx_mapping, Tensor query_start_loc, Tensor prefill_lens, "
    "Tensor num_computed_tokens) -> ()",
    "combine_sampled_and_draft_tokens_cpu": "(Tensor(a!) input_ids, Tensor idx_mapping, "
    "Tensor last_sampled_tokens, Tensor query_start_loc, Tensor seq_lens, "
    "Tensor prefill_len, Tensor draft_tokens, Tensor cu_num_logits, int num_logits, "
    "int num_new_sampled_tokens) -> Tensor",
    "post_update_cpu": "(Tensor idx_mapping, Tensor(a!) num_computed_tokens, "
    "Tensor(b!) last_sampled_tokens, Tensor(c!)? output_bin_counts, Tensor sampled_tokens, "
    "Tensor num_sampled, Tensor num_rejected, Tensor? query_start_loc, "
    "Tensor(d!) all_token_ids, Tensor(e!) total_len) -> ()",
}


def _tokens(idx_mapping: torch.Tensor, query_start_loc: torch.Tensor):
    """Per scheduled token: its batch row, its offset in the row's query, the row's state
    index (long), and the number of tokens."""
    n = idx_mapping.shape[0]
    starts = query_start_loc[: n + 1].long()
    num_tokens = int(starts[-1]) if n else 0
    lens = starts[1:] - starts[:-1]
    dev = starts.device
    row = torch.repeat_interleave(torch.arange(n, device=dev), lens, output_size=num_tokens)
    offset = torch.arange(num_tokens, device=dev) - starts[:-1][row]
    return row, offset, idx_mapping.long()[row], num_tokens


def gather_block_table(block_table, output, idx_mapping, num_blocks, num_reqs_padded) -> None:
    """``_gather_block_tables_kernel``: rows in batch order, entries past a request's
    block count and padding rows zero."""
    n = idx_mapping.shape[0]
    rows = block_table[idx_mapping.long()]
    cols = torch.arange(block_table.shape[1], device=rows.device)
    keep = cols.unsqueeze(0) < num_blocks[idx_mapping.long()].unsqueeze(1)
    output[:n] = torch.where(keep, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
    output[n:num_reqs_padded] = 0


def compute_slot_mapping(
    block_table, slot_mapping, idx_mapping, query_start_loc, positions, block_size,
    mapping_enabled, pad_slot_id,
) -> None:  # fmt: skip
    """``_compute_slot_mappings_kernel`` (no context parallelism): each token's cache slot;
    tokens of dummy requests (index -1), of a disabled group and past the step: padding."""
    row, _, state, num_tokens = _tokens(idx_mapping, query_start_loc)
    slot_mapping[num_tokens:] = pad_slot_id
    if num_tokens == 0:
        return
    if not mapping_enabled:
        slot_mapping[:num_tokens] = pad_slot_id
        return
    pos = positions[:num_tokens].long()
    real = state >= 0
    blocks = block_table[state.clamp_min(0), pos // block_size].long()
    slots = blocks * block_size + pos % block_size
    slot_mapping[:num_tokens] = torch.where(real, slots, pad_slot_id)


def prepare_prefill_inputs(
    input_ids, next_prefill_tokens, idx_mapping, query_start_loc, all_token_ids, prefill_len,
    num_computed_tokens,
) -> None:  # fmt: skip
    """``_prepare_prefill_inputs_kernel``: prompt tokens of requests still prefilling, and
    the next ``next_prefill_tokens.shape[0]`` prompt tokens (0 past the prompt)."""
    _, offset, state, num_tokens = _tokens(idx_mapping, query_start_loc)
    computed = num_computed_tokens.long()[state]
    prefilling = computed < prefill_len.long()[state]
    if num_tokens:
        src = all_token_ids[state, (computed + offset).clamp_max(all_token_ids.shape[1] - 1)]
        input_ids[:num_tokens] = torch.where(prefilling, src, input_ids[:num_tokens])
    lookahead = next_prefill_tokens.shape[0]
    if lookahead == 0 or idx_mapping.shape[0] == 0:
        return
    reqs = idx_mapping.long()
    starts = query_start_loc[: reqs.shape[0] + 1].long()
    done = num_computed_tokens.long()[reqs]
    ahead = done.unsqueeze(0) + (starts[1:] - starts[:-1]).unsqueeze(0)
    ahead = ahead + torch.arange(lookahead, device=reqs.device).unsqueeze(1)  # [L, R]
    length = prefill_len.long()[reqs]
    tokens = all_token_ids[reqs.unsqueeze(0), ahead.clamp_max(all_token_ids.shape[1] - 1)]
    tokens = torch.where(ahead < length, tokens, torch.zeros_like(tokens))
    still = (done < length).unsqueeze(0).expand_as(tokens)
    cols = reqs.unsqueeze(0).expand_as(tokens)
    steps = torch.arange(lookahead, device=reqs.device).unsqueeze(1)
    current = next_prefill_tokens[steps, cols]
    next_prefill_tokens[steps, cols] = torch.where(
        still, tokens.to(next_prefill_tokens.dtype), current
    )


def prepare_pos_seq_lens(idx_mapping, query_start_loc, num_computed_tokens, pos, seq_lens) -> None:
    """``_prepare_pos_seq_lens_kernel``: positions continue from the computed tokens;
    unused ``seq_lens`` entries are 0 (graph padding)."""
    n = idx_mapping.shape[0]
    _, offset, state, num_tokens = _tokens(idx_mapping, query_start_loc)
    computed = num_computed_tokens[idx_mapping.long()]
    starts = query_start_loc[: n + 1]
    seq_lens[:n] = (computed + (starts[1:] - starts[:-1])).to(seq_lens.dtype)
    seq_lens[n:] = 0
    pos[:num_tokens] = (num_computed_tokens.long()[state] + offset).to(pos.dtype)


def prepare_mrope_positions(
    positions, prefill_positions, prefill_delta, idx_mapping, query_start_loc, prefill_lens,
    num_computed_tokens,
) -> None:  # fmt: skip
    """``_prepare_rope_positions_kernel`` on the CPU runner's layout (prefill positions of
    request r, dimension j in row ``r * num_dims + j``): prompt positions while prefilling,
    ``position + delta`` after."""
    _, offset, state, num_tokens = _tokens(idx_mapping, query_start_loc)
    if num_tokens == 0:
        return
    dims = positions.shape[0]
    orig = num_computed_tokens.long()[state] + offset
    prefilling = (num_computed_tokens.long() < prefill_lens.long())[state]
    rows = state.unsqueeze(0) * dims + torch.arange(dims, device=state.device).unsqueeze(1)
    cols = orig.clamp_max(prefill_positions.shape[1] - 1).unsqueeze(0).expand_as(rows)
    prompt = prefill_positions[rows, cols]
    later = (orig + prefill_delta.long()[state]).unsqueeze(0).expand_as(prompt)
    positions[:, :num_tokens] = torch.where(prefilling, prompt, later).to(positions.dtype)


def combine_sampled_and_draft_tokens(
    input_ids, idx_mapping, last_sampled_tokens, query_start_loc, seq_lens, prefill_len,
    draft_tokens, cu_num_logits, num_logits, num_new_sampled_tokens,
) -> torch.Tensor:  # fmt: skip
    """``_combine_sampled_and_draft_tokens_kernel``: the logits indices (the last
    ``num_logits`` tokens of each request); past the prompt, the last sampled token and
    draft tokens are written into ``input_ids``."""
    n = idx_mapping.shape[0]
    cu = cu_num_logits[: n + 1].long()
    counts = cu[1:] - cu[:-1]
    ends = query_start_loc[1 : n + 1].long()
    dev = idx_mapping.device
    row = torch.repeat_interleave(torch.arange(n, device=dev), counts, output_size=num_logits)
    logits_indices = ends[row] - counts[row] + (torch.arange(num_logits, device=dev) - cu[:-1][row])
    for b in range(n):  # decoding rows only; a reranker never has one
        state = int(idx_mapping[b])
        seq_len, length = int(seq_lens[b]), int(prefill_len[state])
        if seq_len <= length:
            continue
        k, end = int(counts[b]), int(ends[b])
        drafts = k - num_new_sampled_tokens
        if num_new_sampled_tokens > 0 and seq_len - k >= length:
            input_ids[end - k] = last_sampled_tokens[state]
        if drafts > 0:
            input_ids[end - drafts : end] = draft_tokens[state, :drafts]
    return logits_indices.to(torch.int64)


def post_update(
    idx_mapping, num_computed_tokens, last_sampled_tokens, output_bin_counts, sampled_tokens,
    num_sampled, num_rejected, query_start_loc, all_token_ids, total_len,
) -> None:  # fmt: skip
    """``_post_update_kernel`` without draft tokens: record sampled tokens, advance the
    computed-token counts."""
    for b in range(idx_mapping.shape[0]):
        state = int(idx_mapping[b])
        if state < 0:
            continue
        k, length = int(num_sampled[b]), int(total_len[state])
        if k > 0:
            last_sampled_tokens[state] = sampled_tokens[b, k - 1]
            total_len[state] = length + k
            all_token_ids[state, length : length + k] = sampled_tokens[b, :k]
            if output_bin_counts is not None:
                new = sampled_tokens[b, :k]
                ones = torch.ones_like(new, dtype=output_bin_counts.dtype)
                output_bin_counts[state].index_add_(0, new.long(), ones)
        qlen = 0
        if query_start_loc is not None:
            qlen = int(query_start_loc[b + 1]) - int(query_start_loc[b])
        num_computed_tokens[state] += qlen - int(num_rejected[b])


_IMPLS = {
    "gather_block_table_cpu": gather_block_table,
    "compute_slot_mapping_cpu": compute_slot_mapping,
    "prepare_prefill_inputs_cpu": prepare_prefill_inputs,
    "prepare_pos_seq_lens_cpu": prepare_pos_seq_lens,
    "prepare_mrope_positions_cpu": prepare_mrope_positions,
    "combine_sampled_and_draft_tokens_cpu": combine_sampled_and_draft_tokens,
    "post_update_cpu": post_update,
}


@functools.cache
def register(dispatch_key: str) -> torch.library.Library:
    """Define the ops in vLLM's ``_C`` namespace (a fragment: vLLM's CPU wheel is absent, so
    nothing else defines them) for the runner's device; idempotent per process."""
    lib = torch.library.Library("_C", "FRAGMENT")
    for name, schema in _OPS.items():
        if not hasattr(torch.ops._C, name):
            lib.define(name + schema)
        lib.impl(name, _IMPLS[name], dispatch_key)
    return lib
