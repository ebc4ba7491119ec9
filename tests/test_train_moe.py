"""A MoE model trains through train.py and logs its router losses and expert balance."""

import json

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
    assert logged and all("aux_loss" in e and "router_z_loss" in e and "moe/max_min_load_ratio" in e for e in logged)
    assert (tmp_path / "run" / "final_model" / "model.safetensors").is_file()


def test_moe_run_resumes_from_a_checkpoint_exactly(tmp_path):
    """A checkpoint stores one tensor per expert (save_pretrained's format) and the live model stacks them; resuming
    must read them back (before: every expert restarted from its initial weights, with a missing-keys warning)."""
    config = write_tiny_config(tmp_path, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    resume_matches_uninterrupted(tmp_path, config)
