"""--optim muon on one process: the Newton-Schulz orthogonalisation (batched, 3-D expert stacks), which parameters
are Muon's, the AdamW side equal to torch's AdamW, the Muon side equal to torch's Muon on 2-D matrices (RMS-matched),
and the optimizer state saved and resumed bitwise. Distributed runs: test_muon_distributed.py."""

import copy

import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.errors import UsageError
from moai_llm.training.arguments import MoaiTrainingArguments
from moai_llm.training.muon import MuonAdamW, muon_param_groups, orthogonalize

from .conftest import moe_model, tiny_config


def test_orthogonalize_batches_matrices_and_expert_stacks():
    torch.manual_seed(0)
    stack = torch.randn(3, 48, 16)  # three tall matrices, as an expert stack holds them
    together = orthogonalize(stack)
    alone = torch.stack([orthogonalize(m) for m in stack])
    assert torch.allclose(together, alone, atol=1e-5)
    singular = torch.linalg.svdvals(together)  # [3, 16]: near 1, as Newton-Schulz's quintic leaves them
    assert singular.min() > 0.5 and singular.max() < 1.5
    assert orthogonalize(torch.randn(2, 5, 16, 24)).shape == (2, 5, 16, 24)


def names_in(model, groups, muon: bool) -> set[str]:
    ids = {id(p) for g in groups if g["muon"] == muon for p in g["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("tied", [False, True])
def test_hidden_matrices_are_muons_the_rest_adamws(tied):
    model = moe_model(tie_word_embeddings=tied, mlp_only_layers=[0])
    groups = muon_param_groups(model, 0.1, {n for n, _ in model.named_parameters() if "norm" not in n})
    muon = names_in(model, groups, True)
    expected = {
        f"model.layers.{i}.{part}"
        for i in range(2)
        for part in (
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
        )
    }
    expected |= {f"model.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}  # the dense layer
    expected |= {"model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"}
    assert muon == expected
    adamw = names_in(model, groups, False)
    assert "model.layers.1.mlp.gate.weight" in adamw  # the router
    assert "model.embed_tokens.weight" in adamw and all(
        "norm" in n or "embed" in n or "lm_head" in n or "gate." in n for n in adamw
    )
    assert groups[2]["weight_decay"] == 0.0 and all(p.ndim == 1 for p in groups[2]["params"])


def one_step_grads(model, seed: int):
    torch.manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (2, 12))
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()


def test_adamw_side_equals_torch_adamw():
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config())
    reference = copy.deepcopy(model)
    ours = MuonAdamW([{"params": list(model.parameters()), "muon": False}], lr=1e-2, weight_decay=0.1)
    theirs = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(3):
        for net, optimizer in ((model, ours), (reference, theirs)):
            one_step_grads(net, step)
            optimizer.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-7, rtol=0), name


def test_muon_side_equals_torch_muon_rms_matched():
    """torch.optim.Muon (2-D only, bf16 Newton-Schulz) with Moonshot's RMS matching: the same steps within bf16."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(32, 64) * 0.05), torch.nn.Parameter(torch.randn(96, 32) * 0.05)]
    twins = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    starts = [w.detach().clone() for w in weights]
    ours = MuonAdamW([{"params": weights, "muon": True}], lr=0.02, weight_decay=0.1)
    theirs = torch.optim.Muon(twins, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(3):
        torch.manual_seed(step)
        for w, t in zip(weights, twins):
            g = torch.randn_like(w)
            w.grad, t.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    for w, t, start in zip(weights, twins, starts):
        ours_moved, theirs_moved = w.detach() - start, t.detach() - start
        assert (ours_moved - theirs_moved).norm() / theirs_moved.norm() < 0.02  # bf16 vs fp32 Newton-Schulz
        rms = theirs_moved.pow(2).mean().sqrt() / 3  # per step, decay aside: lr x 0.2
        assert 0.5 * 0.02 * 0.2 < rms < 1.5 * 0.02 * 0.2


def test_state_is_saved_and_resumed_bitwise():
    model = moe_model()
    groups = muon_param_groups(model, 0.1, {n for n, _ in model.named_parameters()})
    optimizer = MuonAdamW(groups, lr=1e-2)
    for step in range(3):
        one_step_grads(model, step)
        optimizer.step()
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    for step in range(3, 5):
        one_step_grads(model, step)
        optimizer.step()

    resumed = moe_model()
    resumed.load_state_dict(saved_model)
    again = MuonAdamW(muon_param_groups(resumed, 0.1, {n for n, _ in resumed.named_parameters()}), lr=1e-2)
    again.load_state_dict(saved_state)
    for step in range(3, 5):
        one_step_grads(resumed, step)
        again.step()
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


def test_muon_with_deepspeed_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--optim muon does not work with DeepSpeed"):
        MoaiTrainingArguments(output_dir=str(tmp_path), optim="muon", deepspeed="configs/deepspeed_zero3.json")
    assert MoaiTrainingArguments(output_dir=str(tmp_path), optim="muon").optim == "muon"


def test_ranks_split_the_orthogonalisation(monkeypatch):
    """Under DDP each of 2 ranks orthogonalises ceil(n / 2) of a shape's n matrices, and the gathered result is
    what one process computes."""
    from moai_llm.training import muon

    torch.manual_seed(0)
    matrices = torch.randn(5, 8, 12)
    expected = orthogonalize(matrices)
    shares = {
        rank: orthogonalize(torch.cat([matrices, torch.zeros(1, 8, 12)])[rank * 3 : rank * 3 + 3]) for rank in (0, 1)
    }
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(muon.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(muon.dist, "get_world_size", lambda: 2)
        monkeypatch.setattr(muon.dist, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(muon, "orthogonalize", lambda x, steps: seen.append(x.shape[0]) or orthogonalize(x, steps))

        def all_gather(outputs, mine, rank=rank):
            assert torch.equal(mine, shares[rank])
            outputs[0].copy_(shares[0])
            outputs[1].copy_(shares[1])

        monkeypatch.setattr(muon.dist, "all_gather", all_gather)
        assert torch.allclose(muon.shared_work(matrices, 5), expected, atol=1e-6)
    assert seen == [3, 3]  # each rank 3 of the 5 (one padding), not 5 each


@pytest.mark.integration  # whole train.py runs
def test_trainer_checkpoint_resumes_muon_exactly(tmp_path):
    from .train_helpers import resume_matches_uninterrupted, write_tiny_config

    config = write_tiny_config(tmp_path, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    resume_matches_uninterrupted(tmp_path, config, "--optim", "muon")
