"""--optim muon on 2 CPU ranks (gloo) equals one process at the same global batch, under DDP (the orthogonalisation
split across ranks, then all-gathered) and under FSDP2 (each update gathered whole, each rank keeping its shard),
dense and MoE."""

import logging

import pytest
from safetensors.torch import load_file

from moai_llm import MoaiForCausalLM

from .distributed_helpers import torchrun
from .test_sharded_train import ENGINES, PROBE, _args
from .train_helpers import run_inprocess, write_tiny_config

pytestmark = pytest.mark.integration  # torchrun ranks

# no load-balancing term: it is a product of means over each rank's tokens, so 2 ranks x 2 rows differ from 1 x 4 by
# design (not by the optimizer); the cross-entropy is a mean over tokens, equal however the batch is split
MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "router_aux_loss_coef": 0.0}


def muon_args(output_dir, model_config, batch_size) -> list[str]:
    """The sharded tests' equal-steps run with Muon (fp32) instead of SGD. AdamW's side (embeddings, lm_head, norms)
    takes eps 1e-4: with 1e-8, reduction-order noise in a near-zero embedding gradient becomes an lr-sized step
    (4e-5 apart in 2 of 3 runs; why the other equality tests use SGD), while Muon's matrices agreed to 4e-7."""
    args = _args(output_dir, model_config, batch_size)
    args[args.index("--optim") + 1] = "muon"
    args[args.index("--learning_rate") + 1] = "0.01"
    return [*args, "--adam_epsilon", "1e-4"]


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_two_ranks_match_one_process(tmp_path, engine, moe, caplog):
    model_config = write_tiny_config(tmp_path, **(MOE if moe else {}))
    flags = ["--ddp_backend", "gloo", *ENGINES.get(engine, [])]
    result = torchrun(PROBE, [tmp_path, *muon_args(tmp_path / engine, model_config, 2), *flags], tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    gathered = load_file(str(tmp_path / "gathered.safetensors"))
    single = tmp_path / "single"
    caplog.set_level(logging.INFO, logger="moai_llm.training.trainer")
    run_inprocess(muon_args(single, model_config, 4))
    assert "Muon for" in caplog.text
    # loaded, not read: a saved MoE model holds one tensor per expert, the live one stacks them
    reference = MoaiForCausalLM.from_pretrained(single / "final_model").state_dict()
    diffs = {name: (gathered[name] - reference[name]).abs().max().item() for name in reference}
    assert max(diffs.values()) <= 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
