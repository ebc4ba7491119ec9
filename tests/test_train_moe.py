"""A MoE model trains through train.py and logs its router losses and expert balance."""

import json
import math

import pytest

from .train_helpers import fast_args, resume_matches_uninterrupted, run_inprocess, write_tiny_config

pytestmark = pytest.mark.integration  # a whole train.py run


def test_moe_training_logs_router_terms(tmp_path):
    config = write_tiny_config(
        tmp_path, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, router_z_loss_coef=1e-3
    )
    run_inprocess(fast_args(tmp_path / "run", config, "--max_steps", "4", "--logging_steps", "2", "--save_steps", "4"))
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:  # the terms with their coefficients (aux 0.001 by default, z 1e-3), averaged per micro-batch
        assert 2.0 <= entry["aux_loss"] / 1e-3 < 2.5  # top-2: 2.0 at perfect balance, near it after 4 steps
        assert entry["router_z_loss"] / 1e-3 == pytest.approx(math.log(4) ** 2, rel=0.1)  # router logits near 0
        assert entry["lm_loss"] + entry["aux_loss"] + entry["router_z_loss"] == pytest.approx(entry["loss"], abs=1e-5)
        assert 7.0 < entry["lm_loss"] < 10.0  # cross-entropy near ln(8192) = 9.01 after 4 steps
        assert 1.0 <= entry["moe/max_min_load_ratio"] < 100.0
    assert (tmp_path / "run" / "final_model" / "model.safetensors").is_file()


def test_moe_run_resumes_from_a_checkpoint_exactly(tmp_path):
    """A checkpoint stores one tensor per expert (save_pretrained's format) and the live model stacks them; resuming
    must read them back (before: every expert restarted from its initial weights, with a missing-keys warning)."""
    config = write_tiny_config(tmp_path, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    resume_matches_uninterrupted(tmp_path, config)
