"""Documents packed in one row (position_ids restarting) must not see each other, on every backend."""

import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.batch_format import flash_varlen_kwargs

from .conftest import qwen3_twin, tiny_config

LENGTHS = [7, 4, 9, 3]


def _packed_row():
    torch.manual_seed(1)
    docs = [torch.randint(3, 128, (n,)) for n in LENGTHS]
    ids = torch.cat(docs)[None]
    position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    return docs, ids, position_ids


@torch.no_grad()  # flex_attention has no backward on CPU
@pytest.mark.parametrize("impl", ["sdpa", "eager", "flex_attention"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["no-mask", "ones-mask"])
@pytest.mark.parametrize("use_cache", [False, True], ids=["no-cache", "cache"])
def test_packed_documents_are_isolated(impl, with_mask, use_cache):
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config()).eval()
    model.set_attn_implementation(impl)
    docs, ids, position_ids = _packed_row()
    kwargs = dict(position_ids=position_ids, use_cache=use_cache)
    if with_mask:
        kwargs["attention_mask"] = torch.ones_like(ids)
    packed = model(ids, **kwargs).logits[0]
    start = 0
    for doc in docs:
        alone = model(doc[None]).logits[0]
        assert (packed[start : start + len(doc)] - alone).abs().max() <= 1e-5
        start += len(doc)


def test_stock_qwen3_leaks_across_documents_with_cache():
    """Why MoaiModel handles packing itself: transformers' detection is skipped when a cache exists."""
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config()).eval()
    reference = qwen3_twin(model)
    docs, ids, position_ids = _packed_row()
    packed = reference(ids, position_ids=position_ids, use_cache=True).logits[0]
    second = reference(docs[1][None]).logits[0]
    assert (packed[7:11] - second).abs().max() > 1e-3


def test_packed_batch_of_rows_with_padding_mask():
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config()).eval()
    docs, ids, position_ids = _packed_row()
    pad = 5
    ids2 = torch.cat([ids, torch.zeros(1, pad, dtype=torch.long)], 1)
    pos2 = torch.cat([position_ids, torch.arange(pad)[None]], 1)
    batch_ids = torch.cat([ids2, torch.cat([docs[2], docs[0], torch.zeros(pad + 7, dtype=torch.long)])[None]])
    batch_pos = torch.cat([pos2, torch.cat([torch.arange(9), torch.arange(7), torch.arange(pad + 7)])[None]])
    mask = torch.ones_like(batch_ids)
    mask[0, -pad:] = 0
    mask[1, 16:] = 0
    logits = model(batch_ids, attention_mask=mask, position_ids=batch_pos).logits
    assert (logits[1, 9:16] - model(docs[0][None]).logits[0]).abs().max() <= 1e-5
    assert (logits[0, 11:20] - model(docs[2][None]).logits[0]).abs().max() <= 1e-5


def test_flash_varlen_boundaries_cut_at_restarts_and_rows():
    position_ids = torch.tensor([[0, 1, 2, 0, 1], [1, 1, 0, 1, 2]])
    kwargs = flash_varlen_kwargs(position_ids)
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 7, 10]
    assert kwargs["max_length_q"] == 3
    assert kwargs["cu_seq_lens_q"].dtype == torch.int32
