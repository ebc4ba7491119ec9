"""Sharded training on 2 CPU processes (gloo): `--fsdp` (FSDP2) and, where DeepSpeed is installed, ZeRO-3 really shard,
train like one process at the same global batch and save the whole model as final_model."""

import importlib.util
import json
import types

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from .distributed_helpers import torchrun
from .train_helpers import EQUAL_STEPS, run_inprocess, write_tiny_config

pytestmark = pytest.mark.integration  # torchrun ranks and pretrain.sh

STEPS = 4

# run_training under torchrun, plus a callback that records each rank's parameters after the first step and the
# full state dict gathered from both ranks when training ends.
PROBE = """
import json, sys
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback
from moai_llm.training.cli import parse_args
from moai_llm.training.run import run_training

out = sys.argv[1]


def describe(p):
    # whether the parameter is sharded on this rank, the elements this rank holds, the whole size
    if isinstance(p, DTensor):  # FSDP2
        return {"sharded": [x.dim if x.is_shard() else str(x) for x in p.placements] == [0],
                "local": p.to_local().numel(), "full": p.numel()}
    if hasattr(p, "ds_tensor"):  # ZeRO-3: this rank's partition aside; outside the forward, large ones are empty
        return {"sharded": p.ds_tensor.numel() < p.ds_numel, "local": p.ds_tensor.numel(), "full": p.ds_numel,
                "released": p.numel() == 0}
    return {"sharded": False, "local": p.numel(), "full": p.numel()}


def gathered_state(model):
    if any(hasattr(p, "ds_tensor") for p in model.parameters()):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return {k: v.clone() for k, v in model.state_dict().items()}
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.clone() for k, v in full.items()}


class Probe(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            with open(f"{out}/shards-{args.process_index}.json", "w") as handle:
                json.dump({name: describe(p) for name, p in model.named_parameters()}, handle)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        full = gathered_state(model)  # a collective: every rank
        if args.process_index == 0:
            save_file(full, f"{out}/gathered.safetensors")


run_training(*parse_args(sys.argv[2:]), extra_callbacks=[Probe()])
"""


def _args(output_dir, model_config, batch_size):
    return [
        "--model_config",
        model_config,
        "--output_dir",
        str(output_dir),
        "--max_seq_length",
        "64",
        "--batch_size",
        str(batch_size),
        "--max_steps",
        str(STEPS),
        *EQUAL_STEPS,
        "--seed",
        "0",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--eval_fraction",
        "0",
        "--save_strategy",
        "no",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        "0",
    ]


ENGINES = {
    "fsdp": ["--fsdp", "--fsdp_config", "configs/fsdp_config.json"],  # as pretrain.sh PARALLEL=fsdp
    "zero3": ["--deepspeed", "configs/deepspeed_zero3.json"],
}
NEEDS_DEEPSPEED = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is not installed (with it, ZeRO-3 runs on CPU over gloo)",
)


@pytest.mark.parametrize("engine", ["fsdp", pytest.param("zero3", marks=NEEDS_DEEPSPEED)])
def test_two_sharded_cpu_ranks_match_one_process_and_save_the_whole_model(tmp_path, engine):
    model_config = write_tiny_config(tmp_path)
    run_dir = tmp_path / engine
    flags = ["--ddp_backend", "gloo", *ENGINES[engine]]
    result = torchrun(PROBE, [tmp_path, *_args(run_dir, model_config, 2), *flags], tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]

    # Sharded while training: every parameter split across the ranks, each rank holding about half (ZeRO-3 pads).
    shards = [json.loads((tmp_path / f"shards-{rank}.json").read_text()) for rank in (0, 1)]
    total = sum(entry["full"] for entry in shards[0].values())
    for rank in shards:
        assert all(entry["sharded"] for entry in rank.values()), rank
        assert 0.45 <= sum(entry["local"] for entry in rank.values()) / total <= 0.55
    held = sum(entry["local"] for rank in shards for entry in rank.values())
    assert held == total if engine == "fsdp" else total <= held <= total + 2 * len(shards[0])
    if engine == "zero3":  # the fused loss needs this weight whole: it is gathered only inside lm_head's forward
        assert shards[0]["lm_head.weight"]["released"]

    # The final model is the gathered one, loads with AutoModelForCausalLM and names MOAI's code, not the engine's.
    final = run_dir / "final_model"
    gathered = load_file(str(tmp_path / "gathered.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model).__name__ == "MoaiForCausalLM"
    state = model.state_dict()
    assert state.keys() == gathered.keys()
    assert all(torch.equal(state[name], gathered[name]) for name in gathered)
    config = json.loads((final / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_moai.MoaiForCausalLM"
    files = {path.name for path in final.iterdir()}
    assert {"modeling_moai.py", "tokenizer.json", "generation_config.json", "model.safetensors"} <= files
    assert not any(name.startswith("_fsdp") for name in files) and "training_args.bin" not in files

    # Same global batch (2 ranks x 2 rows = 1 process x 4 rows): same weights after the steps.
    single = tmp_path / "single"
    run_inprocess(_args(single, model_config, 4))
    reference = load_file(str(single / "final_model" / "model.safetensors"))
    diffs = {name: (gathered[name] - reference[name]).abs().max().item() for name in reference}
    assert max(diffs.values()) <= 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]


def test_lora_under_fsdp2_merges_on_rank_zero_like_one_process(tmp_path):
    """The sharded model has no whole weights to merge into: rank 0 merges the gathered adapter into a float32
    copy of the base. The result equals a 1-process LoRA run at the same global batch."""
    from transformers import AutoTokenizer

    from moai_llm import MoaiForCausalLM
    from moai_llm.training.data_setup import DEFAULT_TOKENIZER

    from .conftest import tiny_config

    base = tmp_path / "base"
    torch.manual_seed(0)
    MoaiForCausalLM(tiny_config(vocab_size=8192)).save_pretrained(base)
    AutoTokenizer.from_pretrained(DEFAULT_TOKENIZER).save_pretrained(base)
    lora = [
        "--pretrained_model",
        str(base),
        "--use_lora",
        "true",
        "--merge_lora",
        "true",
        "--lora_r",
        "4",
        "--lora_dropout",
        "0",
    ]  # dropout masks would differ between 2 ranks and 1 process

    def args(output_dir, batch_size):
        flags = _args(output_dir, str(base / "config.json"), batch_size)
        return [*flags[2:], *lora]  # the model comes from --pretrained_model

    result = torchrun(
        PROBE, [tmp_path, *args(tmp_path / "fsdp", 2), "--ddp_backend", "gloo", *ENGINES["fsdp"]], tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:]
    shards = json.loads((tmp_path / "shards-0.json").read_text())
    assert all(entry["sharded"] for name, entry in shards.items() if "lora_" in name)
    run_inprocess(args(tmp_path / "single", 4))
    merged = load_file(str(tmp_path / "fsdp" / "final_model" / "model.safetensors"))
    reference = load_file(str(tmp_path / "single" / "final_model" / "model.safetensors"))
    start = load_file(str(base / "model.safetensors"))
    assert merged.keys() == reference.keys()
    assert max((merged[k] - start[k]).abs().max().item() for k in merged) > 1e-3  # the adapters moved the weights
    diffs = {name: (merged[name] - reference[name]).abs().max().item() for name in reference}
    assert max(diffs.values()) <= 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]


def test_pretrain_sh_passes_each_engine_its_config():
    from .test_pretrain_sh import run

    plan = {"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80", "MODEL_SIZE": "16b"}
    fsdp = run({**plan, "PARALLEL": "fsdp"})
    assert fsdp.returncode == 0 and "--fsdp --fsdp_config configs/fsdp_config.json" in fsdp.stdout, fsdp.stderr
    zero3 = run({**plan, "PARALLEL": "deepspeed", "DEEPSPEED_CONFIG": "configs/deepspeed_zero3.json"})
    assert zero3.returncode == 0 and "--deepspeed configs/deepspeed_zero3.json" in zero3.stdout, zero3.stderr
    missing = run({**plan, "PARALLEL": "deepspeed", "DEEPSPEED_CONFIG": "nope.json"})
    assert missing.returncode == 2 and "DEEPSPEED_CONFIG=nope.json: file not found" in missing.stderr


BUILD_PROBE = """
import json, sys
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from moai_llm.training.cli import parse_args
from moai_llm.training.data_setup import load_tokenizer
from moai_llm.training.run import build_model
from moai_llm.training.trainer import MoaiTrainer

out = sys.argv[1]
model_args, data_args, training_args = parse_args(sys.argv[2:])
tokenizer = load_tokenizer(model_args)
rank = training_args.process_index  # also sets up the process group


def status(field):  # bytes, from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024


with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # resets the peak RSS (VmHWM) to the current RSS: the peak below is the build's
before = status("VmRSS")
model = build_model(model_args, training_args, tokenizer)
trainer = MoaiTrainer(model=model, args=training_args, processing_class=tokenizer)
model = trainer.accelerator.prepare(trainer.model)  # what train() does first (before: rank 0's weights broadcast)
grown = status("VmHWM") - before
full = 4 * sum(p.numel() for p in model.parameters())
whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
with open(f"{out}/build-{rank}.json", "w") as handle:
    json.dump({"grown": grown, "full": full}, handle)
if rank == 0:
    save_file({name: tensor.contiguous() for name, tensor in whole.items()}, f"{out}/sharded.safetensors")
"""


@pytest.mark.integration  # two ranks in fresh interpreters, so that each one's peak RSS is the build's
def test_fsdp_ranks_create_only_their_shards_of_the_one_process_weights(tmp_path):
    """From scratch under FSDP2, every rank builds on the meta device and creates only its own shards: no rank's host
    memory grows by 0.6x of a whole copy during the build (rank 0 used to hold the whole model, then broadcast it),
    and the gathered weights are exactly those of a one-process build with the same seed (tied embedding tied)."""
    from moai_llm import MoaiConfig
    from moai_llm.training.run import new_model

    # Deep enough that one whole parameter (the 8192 x 512 embedding, created in turn) is small next to a shard; an
    # odd MLP width, so that the two ranks' shards of gate_proj and up_proj differ in size (769 and 768 rows).
    model_config = write_tiny_config(
        tmp_path,
        hidden_size=512,
        intermediate_size=1537,
        num_hidden_layers=24,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        tie_word_embeddings=True,
    )
    flags = ["--model_config", model_config, "--output_dir", str(tmp_path / "run"), "--seed", "7", "--use_cpu", "true"]
    flags += ["--eval_strategy", "no", "--ddp_backend", "gloo", *ENGINES["fsdp"]]
    result = torchrun(BUILD_PROBE, [tmp_path, *flags], tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    for rank in (0, 1):
        build = json.loads((tmp_path / f"build-{rank}.json").read_text())
        assert build["grown"] <= 0.6 * build["full"], (rank, build)

    one_process = new_model(MoaiConfig.from_json_file(model_config), types.SimpleNamespace(fsdp=[], seed=7))
    assert one_process.lm_head.weight is one_process.model.embed_tokens.weight
    expected = one_process.state_dict()
    sharded = load_file(str(tmp_path / "sharded.safetensors"))
    assert sharded.keys() == expected.keys()
    assert all(torch.equal(sharded[name], expected[name]) for name in expected)


TRAIN = """
import sys
from moai_llm.training.cli import parse_args
from moai_llm.training.stages import run_all

run_all(*parse_args(sys.argv[1:]))
"""


@pytest.mark.integration
def test_sharded_checkpoints_resume_exactly_on_two_ranks(tmp_path):
    """FSDP2 on 2 CPU ranks with AdamW: intermediate checkpoints are sharded (torch distributed checkpoint, one file
    set per rank, no gathered model), final_model is whole; resuming from step 2 ends where the uninterrupted run
    ends."""
    import shutil

    model_config = write_tiny_config(tmp_path)

    def flags(run_dir, *extra):
        args = _args(run_dir, model_config, 2)
        args[args.index("--optim") + 1] = "adamw_torch"
        args[args.index("--learning_rate") + 1] = "1e-3"
        args[args.index("--save_strategy") + 1] = "steps"
        return [*args, "--save_steps", "2", "--ddp_backend", "gloo", *ENGINES["fsdp"], *extra]

    whole = tmp_path / "whole"
    result = torchrun(TRAIN, flags(whole), tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    checkpoint = whole / "checkpoint-2"
    files = {path.name for path in checkpoint.rglob("*") if path.is_file()}
    assert any(name.endswith(".distcp") for name in files), files  # sharded, not a gathered model
    assert "model.safetensors" not in files and (checkpoint / "checkpoint_complete.json").is_file()

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    result = torchrun(TRAIN, flags(resumed, "--resume_from_checkpoint", "auto"), tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    expected = load_file(str(whole / "final_model" / "model.safetensors"))
    got = load_file(str(resumed / "final_model" / "model.safetensors"))
    assert expected.keys() == got.keys()
    diffs = {name: (got[name] - expected[name]).abs().max().item() for name in expected}
    assert max(diffs.values()) == 0.0, diffs
