"""pretrain.sh: planning (DRY_RUN), fail-fast settings; the CPU run itself is in test_pretrain_sh_run.py."""

import os
import re
import subprocess

import pytest

from .conftest import REPO

pytestmark = pytest.mark.integration  # every test runs pretrain.sh (bash) in a subprocess


def run(env_overrides, *args, tokenizer=None):
    env = {k: v for k, v in os.environ.items() if k not in ("NUM_GPUS", "GPU_MEMORY", "MODEL_SIZE", "NNODES")}
    env.update({"PATH": os.environ["PATH"]})
    if tokenizer is not None:
        env["TOKENIZER_PATH"] = str(tokenizer)
    env.update(env_overrides)
    return subprocess.run(
        ["bash", str(REPO / "pretrain.sh"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def tokenizer_dir(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    return tmp_path


def flag(output, name):
    match = re.search(rf"{name} (\S+)", output)
    return match.group(1) if match else None


@pytest.mark.parametrize(
    "memory, parallel, micro, accumulation, checkpointing",
    [
        ("24", "fsdp_grad_op", "2", "16", True),
        ("40", "fsdp", "1", "32", False),
        ("48", "fsdp_grad_op", "1", "32", False),
        ("80", "fsdp_grad_op", "2", "16", False),
        ("141", "ddp", "2", "16", False),
    ],
)
def test_dry_run_two_nodes_of_eight(memory, parallel, micro, accumulation, checkpointing, tokenizer_dir):
    """3b on 16 GPUs: the planned engine, micro-batch and checkpointing by card (docs/scaling.md)."""
    env = {
        "DRY_RUN": "1",
        "NUM_GPUS": "8",
        "NNODES": "2",
        "NODE_RANK": "1",
        "MASTER_ADDR": "10.0.0.1",
        "GPU_MEMORY": memory,
        "MODEL_SIZE": "3b",
        "GPU_NAME": "NVIDIA H100 80GB HBM3",
    }
    result = run(env, "--", "--learning_rate", "2e-4", tokenizer=tokenizer_dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert flag(out, "--nnodes") == "2" and flag(out, "--node_rank") == "1" and flag(out, "--nproc_per_node") == "8"
    assert flag(out, "--master_addr") == "10.0.0.1" and flag(out, "--master_port") == "29500"
    assert flag(out, "--batch_size") == micro and flag(out, "--gradient_accumulation_steps") == accumulation
    assert f"parallel={parallel}" in out and ("--activation_checkpointing true" in out) == checkpointing
    assert {"ddp": None, "fsdp": "configs/fsdp_config.json", "fsdp_grad_op": "configs/fsdp_grad_op_config.json"}[
        parallel
    ] == flag(out, "--fsdp_config")
    assert "= effective 512 sequences" in out
    assert "--learning_rate 2e-4" in out and "NCCL_P2P_DISABLE=0" in out
    assert "--ddp_backend nccl" in out
    assert "--bf16" not in out and "--tf32" not in out  # train.py picks bf16, or fp16 where bf16 is unsupported


def test_dry_run_consumer_gpu_disables_p2p(tokenizer_dir):
    env = {
        "DRY_RUN": "1",
        "NUM_GPUS": "8",
        "GPU_MEMORY": "24",
        "MODEL_SIZE": "2b",
        "GPU_NAME": "NVIDIA GeForce RTX 4090",
    }
    result = run(env, tokenizer=tokenizer_dir)
    assert result.returncode == 0, result.stderr
    assert "NCCL_P2P_DISABLE=1" in result.stdout
    assert flag(result.stdout, "--gradient_accumulation_steps") == "16"  # 4 rows with checkpointing


def test_overrides_and_parallel_engines(tokenizer_dir):
    env = {
        "DRY_RUN": "1",
        "NUM_GPUS": "8",
        "GPU_MEMORY": "80",
        "MODEL_SIZE": "16b",
        "BATCH_SIZE": "1",
        "GRADIENT_ACCUMULATION_STEPS": "3",
        "PARALLEL": "fsdp",
    }
    result = run(env, tokenizer=tokenizer_dir)
    assert result.returncode == 0, result.stderr
    assert "= effective 24 sequences" in result.stdout and "configs/fsdp_config.json" in result.stdout
    assert "--activation_checkpointing true" in result.stdout  # needed for 16b at 80 GB, and planned
    zero3 = {**env, "PARALLEL": "deepspeed", "DEEPSPEED_CONFIG": "configs/deepspeed_zero3.json"}
    result = run(zero3, tokenizer=tokenizer_dir)
    assert result.returncode == 0 and "configs/deepspeed_zero3.json" in result.stdout
    assert "full shard (FSDP / ZeRO-3) over 8" in result.stdout


def test_a_setting_that_cannot_fit_is_refused_with_the_numbers(tokenizer_dir):
    """ZeRO-2 holds 16b's bf16 weights whole (32 GB): on 80 GB cards it does not fit; FORCE_PLAN=1 launches it."""
    env = {"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80", "MODEL_SIZE": "16b", "PARALLEL": "deepspeed"}
    refused = run(env, tokenizer=tokenizer_dir)
    assert refused.returncode == 2 and "command:" not in refused.stdout
    assert refused.stderr.strip() == (
        "pretrain.sh: error: MODEL_SIZE=16b does not fit 8 x 80 GB with PARALLEL=deepspeed: ZeRO-2 / FSDP grad-op "
        "with gradient checkpointing: micro-batch 1 needs 79.1 GB > 72.0 GB (90% of the card; FORCE_PLAN=1 "
        "launches it anyway)"
    )
    forced = run({**env, "FORCE_PLAN": "1"}, tokenizer=tokenizer_dir)
    assert forced.returncode == 0 and "configs/deepspeed_zero2.json" in forced.stdout
    assert "FORCE_PLAN=1: launched although" in forced.stdout
    ddp = run({**env, "PARALLEL": "ddp", "MODEL_SIZE": "3b", "GPU_MEMORY": "48"}, tokenizer=tokenizer_dir)
    assert ddp.returncode == 2 and "3b does not fit 8 x 48 GB with PARALLEL=ddp" in ddp.stderr
    big = run({**env, "PARALLEL": "fsdp", "BATCH_SIZE": "64"}, tokenizer=tokenizer_dir)
    assert big.returncode == 2 and "with PARALLEL=fsdp BATCH_SIZE=64" in big.stderr
    given = run({**env, "PARALLEL": "fsdp", "GRADIENT_CHECKPOINTING": "0"}, tokenizer=tokenizer_dir)
    assert given.returncode == 2 and "without gradient checkpointing" in given.stderr


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NUM_GPUS": "8"}, "no GPU was found"),
        ({"DRY_RUN": "1", "NUM_GPUS": "3", "GPU_MEMORY": "80", "MODEL_SIZE": "3b"}, "does not divide"),
        (
            {"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "24", "MODEL_SIZE": "16b"},
            "MODEL_SIZE=16b does not fit 8 x 24 GB: full shard (FSDP / ZeRO-3) with gradient checkpointing",
        ),
        (
            {"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80", "MODEL_SIZE": "70b"},
            "MODEL_SIZE=70b has no batch-table row",
        ),
        ({"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80", "NNODES": "2"}, "needs MASTER_ADDR"),
        ({"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80", "MODEL_CONFIG": "nope.json"}, "MODEL_CONFIG=nope.json"),
        (
            {"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80", "DATA_CONFIG": "missing.yaml"},
            "DATA_CONFIG=missing.yaml",
        ),
        ({"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80", "PARALLEL": "tp"}, "PARALLEL=tp"),
        ({"DRY_RUN": "1", "NUM_GPUS": "two"}, "NUM_GPUS=two"),
    ],
)
def test_bad_settings_fail_fast_with_one_line(env, message, tokenizer_dir):
    result = run(env, tokenizer=tokenizer_dir)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "command:" not in result.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch_size", "4"], "--batch_size after --: pretrain.sh passes --batch_size itself; set BATCH_SIZE"),
        (["--per_device_train_batch_size=4"], "pretrain.sh passes --batch_size itself; set BATCH_SIZE"),
        (["--output_dir", "elsewhere"], "set OUTPUT_DIR instead"),
        (["--max_seq_length", "512"], "set SEQ_LEN instead"),
        (["--mode", "sft"], "it only pretrains"),
    ],
)
def test_a_flag_pretrain_sh_passes_is_refused_after_the_separator(flags, message, tokenizer_dir):
    """train.py would get it twice; the variable that sets it is named instead."""
    result = run({"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80"}, "--", *flags, tokenizer=tokenizer_dir)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "command:" not in result.stdout


def test_flags_pretrain_sh_does_not_pass_go_through(tokenizer_dir):
    """A value equal to one of pretrain.sh's (RESUME's `auto`) is not a flag; --max_steps is free without MAX_STEPS."""
    plan = {"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80"}
    result = run(plan, "--", "--run_name", "auto", "--max_steps", "5", tokenizer=tokenizer_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("--run_name auto --max_steps 5")
    refused = run({**plan, "MAX_STEPS": "7"}, "--", "--max_steps", "5", tokenizer=tokenizer_dir)
    assert refused.returncode == 2 and "set MAX_STEPS instead" in refused.stderr


def test_missing_tokenizer_fails_fast(tmp_path):
    result = run({"DRY_RUN": "1", "NUM_GPUS": "1", "GPU_MEMORY": "80"}, tokenizer=tmp_path)
    assert result.returncode != 0 and "no tokenizer.json" in result.stderr


def fake_nvidia_smi(directory, memory_mib: int, name: str = "NVIDIA H100 80GB HBM3", count: int = 8):
    """An nvidia-smi on PATH that reports `count` GPUs of `memory_mib` MiB."""
    script = directory / "nvidia-smi"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in\n'
        f'  -L) for i in $(seq 0 {count - 1}); do echo "GPU $i: {name} (UUID: GPU-$i)"; done ;;\n'
        f"  *memory.total*) for i in $(seq 1 {count}); do echo {memory_mib}; done ;;\n"
        f"  *name*) for i in $(seq 1 {count}); do echo '{name}'; done ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{directory}:{os.environ['PATH']}"}


@pytest.mark.parametrize(
    "memory_mib, nominal, micro",
    [(81559, "80", "2"), (24564, "24", "1"), (23028, "24", "1"), (40960, "40", "4"), (143771, "141", "2")],
)
def test_gpu_memory_is_rounded_to_the_nominal_size(memory_mib, nominal, micro, tmp_path, tokenizer_dir):
    env = {"DRY_RUN": "1", "MODEL_SIZE": "3b", **fake_nvidia_smi(tmp_path, memory_mib)}
    result = run(env, tokenizer=tokenizer_dir)
    assert result.returncode == 0, result.stderr
    assert f"GPU_MEMORY={nominal} " in result.stdout and flag(result.stdout, "--batch_size") == micro
    assert flag(result.stdout, "--nproc_per_node") == "8"


def test_relative_paths_are_resolved_from_the_callers_directory(tmp_path):
    caller = tmp_path / "project"
    (caller / "cfg").mkdir(parents=True)
    (caller / "cfg" / "model.json").write_text((REPO / "configs" / "model_config_tiny.json").read_text())
    (caller / "cfg" / "data.yaml").write_text("{}")
    (caller / "tok").mkdir()
    (caller / "tok" / "tokenizer.json").write_text("{}")
    env = {k: v for k, v in os.environ.items() if k not in ("NUM_GPUS", "GPU_MEMORY", "MODEL_SIZE", "NNODES")}
    env.update(
        {
            "DRY_RUN": "1",
            "NUM_GPUS": "1",
            "GPU_MEMORY": "80",
            "MODEL_CONFIG": "cfg/model.json",
            "TOKENIZER_PATH": "tok",
            "DATA_CONFIG": "cfg/data.yaml",
            "OUTPUT_DIR": "runs/a",
        }
    )
    result = subprocess.run(
        ["bash", str(REPO / "pretrain.sh")], cwd=caller, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert flag(out, "--model_config") == str(caller / "cfg" / "model.json")
    assert flag(out, "--tokenizer_path") == str(caller / "tok")
    assert flag(out, "--config") == str(caller / "cfg" / "data.yaml")
    assert flag(out, "--output_dir") == str(caller / "runs" / "a")
    del env["MODEL_CONFIG"], env["TOKENIZER_PATH"]  # defaults stay relative to the repo, made absolute
    result = subprocess.run(
        ["bash", str(REPO / "pretrain.sh")], cwd=caller, env=env, capture_output=True, text=True, timeout=60
    )
    assert flag(result.stdout, "--model_config") == str(REPO / "configs" / "model_config_tiny.json")
    assert flag(result.stdout, "--tokenizer_path") == str(REPO / "moai_llm" / "assets" / "tokenizer")


def test_shutdown_timeout_fits_a_save(tmp_path, tokenizer_dir):
    env = {"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80", "MODEL_SIZE": "16b"}
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=900" in run(env, tokenizer=tokenizer_dir).stdout
    longer = run({**env, "SHUTDOWN_TIMEOUT": "1800"}, tokenizer=tokenizer_dir)
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=1800" in longer.stdout
    bad = run({**env, "SHUTDOWN_TIMEOUT": "soon"}, tokenizer=tokenizer_dir)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "pretrain.sh: error: SHUTDOWN_TIMEOUT=soon is not a whole number of seconds"
    )


def test_dry_run_plan_is_read_from_the_batch_table(tmp_path, tokenizer_dir):
    """The table's sequence length and effective batch are planned with; its micro-batch rows override the plan."""
    table = (REPO / "configs" / "batch_table.yaml").read_text()
    edited = table.replace(
        "  3b:\n    model_config: configs/model_config.json\n    seq_len: 4096\n    effective_batch: 512\n",
        "  3b:\n    model_config: configs/model_config.json\n    seq_len: 2048\n    effective_batch: 256\n"
        "    micro_batch: {24: 1, 80: 1}\n",
    )
    assert edited.count("seq_len: 2048") == 1
    (tmp_path / "table.yaml").write_text(
        edited + "  7b:\n    model_config: configs/model_config.json\n"
        "    seq_len: 1024\n    effective_batch: 4096\n    micro_batch: {80: 512}\n"
    )
    env = {"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80", "MODEL_SIZE": "3b"}
    default = run(env, tokenizer=tokenizer_dir).stdout
    assert flag(default, "--batch_size") == "2" and flag(default, "--max_seq_length") == "4096"
    result = run({**env, "BATCH_TABLE": str(tmp_path / "table.yaml")}, tokenizer=tokenizer_dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert flag(out, "--batch_size") == "1" and flag(out, "--gradient_accumulation_steps") == "32"
    assert flag(out, "--max_seq_length") == "2048" and "= effective 256 sequences" in out
    added = run({**env, "MODEL_SIZE": "7b", "BATCH_TABLE": str(tmp_path / "table.yaml")}, tokenizer=tokenizer_dir)
    assert added.returncode == 2 and "MODEL_SIZE=7b does not fit 8 x 80 GB with BATCH_SIZE=512" in added.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "BATCH_TABLE={path}: file not found"),
        ("models: [\n  3b", "{path}: not valid YAML at line 2 (expected ',' or ']', but got '<stream end>')"),
        (
            "cpu_micro_batch: 4\nmodels:\n  3b: {model_config: configs/model_config.json, seq_len: 4096}\n",
            "{path}: models.3b: missing field(s) effective_batch",
        ),
    ],
)
def test_missing_or_malformed_batch_table_is_one_line(text, message, tmp_path, tokenizer_dir):
    path = tmp_path / "table.yaml"
    if text is not None:
        path.write_text(text)
    env = {"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80", "MODEL_SIZE": "3b", "BATCH_TABLE": str(path)}
    result = run(env, tokenizer=tokenizer_dir)
    assert result.returncode == 2 and "command:" not in result.stdout
    assert result.stderr.strip() == "pretrain.sh: error: " + message.format(path=path)


SIZES = ("tiny", "moe_tiny", "2b", "3b", "16b", "moe_a2b")
CARDS = (24, 40, 48, 80, 141)


def test_every_dry_run_plan_fits_the_memory_models_estimate_of_the_card(tokenizer_dir):
    """DRY_RUN for every MODEL_SIZE x card x {1, 8} GPUs: a plan is printed only when the memory model's estimate of
    what it launches (engine, micro-batch, checkpointing read back from the command) fits 90% of the card; otherwise
    one line says it does not fit. The issue's example, 3b on 8 x 48 GB, is not DDP (48 GB of model states)."""
    from moai_llm.training.launch_plan import BUDGET, PARALLEL_ENGINE
    from moai_llm.training.memory import Setup, Shape, estimate

    env = {k: v for k, v in os.environ.items() if k not in ("NUM_GPUS", "GPU_MEMORY", "MODEL_SIZE", "NNODES")}
    env.update({"DRY_RUN": "1", "TOKENIZER_PATH": str(tokenizer_dir), "MASTER_PORT": "29500"})
    cases = [(size, card, gpus) for size in SIZES for card in CARDS for gpus in (1, 8)]
    results = {}
    for start in range(0, len(cases), 10):  # ten at a time: each is a bash and two short pythons
        running = {
            case: subprocess.Popen(
                ["bash", str(REPO / "pretrain.sh")],
                cwd=REPO,
                env={**env, "MODEL_SIZE": case[0], "GPU_MEMORY": str(case[1]), "NUM_GPUS": str(case[2])},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for case in cases[start : start + 10]
        }
        for case, process in running.items():
            out, err = process.communicate(timeout=120)
            results[case] = (process.returncode, out, err)
    planned = refused = 0
    for (size, card, gpus), (code, out, err) in results.items():
        if code != 0:
            assert code == 2 and len(err.strip().splitlines()) == 1 and "does not fit" in err, (size, card, gpus, err)
            refused += 1
            continue
        parallel = re.search(r"parallel=(\S+)", out).group(1)
        setup = Setup(
            engine=PARALLEL_ENGINE[parallel],
            world=gpus,
            micro_batch=int(flag(out, "--batch_size")),
            seq_len=int(flag(out, "--max_seq_length")),
            gradient_checkpointing="--activation_checkpointing true" in out,
            attention="sdpa" if "sdpa attention" in out else "flash",
        )
        config = Shape.from_file(flag(out, "--model_config"))
        assert estimate(config, setup).total <= BUDGET * card * 1e9, (size, card, gpus)
        assert f"budget: 90% of {card} GB" in out and "total:" in out
        planned += 1
    assert planned > 30 and refused > 5
    assert results[("3b", 48, 8)][0] == 0 and "parallel=ddp" not in results[("3b", 48, 8)][1]
    assert results[("16b", 24, 1)][0] == 2 and results[("tiny", 24, 1)][0] == 0
