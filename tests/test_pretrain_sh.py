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
    "memory, micro, accumulation",
    [("24", "1", "32"), ("40", "1", "32"), ("48", "2", "16"), ("80", "4", "8"), ("141", "8", "4")],
)
def test_dry_run_two_nodes_of_eight(memory, micro, accumulation, tokenizer_dir):
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
    assert "= effective 512 sequences" in out
    assert "--learning_rate 2e-4" in out and "NCCL_P2P_DISABLE=0" in out
    assert "--ddp_backend nccl" in out
    assert "--bf16" not in out and "--tf32" not in out  # train.py picks bf16, or fp16 where bf16 is unsupported


def test_dry_run_consumer_gpu_disables_p2p(tokenizer_dir):
    env = {
        "DRY_RUN": "1",
        "NUM_GPUS": "2",
        "GPU_MEMORY": "24",
        "MODEL_SIZE": "2b",
        "GPU_NAME": "NVIDIA GeForce RTX 4090",
    }
    result = run(env, tokenizer=tokenizer_dir)
    assert result.returncode == 0, result.stderr
    assert "NCCL_P2P_DISABLE=1" in result.stdout
    assert flag(result.stdout, "--gradient_accumulation_steps") == "256"


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
    result = run({**env, "PARALLEL": "deepspeed"}, tokenizer=tokenizer_dir)
    assert "configs/deepspeed_zero2.json" in result.stdout


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NUM_GPUS": "8"}, "no GPU was found"),
        ({"DRY_RUN": "1", "NUM_GPUS": "3", "GPU_MEMORY": "80", "MODEL_SIZE": "3b"}, "does not divide"),
        (
            {"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "24", "MODEL_SIZE": "16b"},
            "no batch-table row for GPU_MEMORY=24",
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
    [(81559, "80", "4"), (24564, "24", "1"), (23028, "24", "1"), (40960, "40", "1"), (143771, "141", "8")],
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
    (caller / "cfg" / "model.json").write_text("{}")
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
    table = (REPO / "configs" / "batch_table.yaml").read_text()
    edited = table.replace("micro_batch: {24: 1, 40: 1, 48: 2, 80: 4, 141: 8}", "micro_batch: {24: 1, 80: 2}")
    edited = edited.replace(
        "  3b:\n    model_config: configs/model_config.json\n    seq_len: 4096\n    effective_batch: 512\n",
        "  3b:\n    model_config: configs/model_config.json\n    seq_len: 2048\n    effective_batch: 256\n",
    )
    assert edited.count("seq_len: 2048") == 1 and "{24: 1, 80: 2}" in edited
    (tmp_path / "table.yaml").write_text(
        edited + "  7b:\n    model_config: configs/model_config.json\n"
        "    seq_len: 1024\n    effective_batch: 64\n    micro_batch: {80: 1}\n"
    )
    env = {"DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "80", "MODEL_SIZE": "3b"}
    default = run(env, tokenizer=tokenizer_dir).stdout
    assert flag(default, "--batch_size") == "4" and flag(default, "--max_seq_length") == "4096"
    result = run({**env, "BATCH_TABLE": str(tmp_path / "table.yaml")}, tokenizer=tokenizer_dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert flag(out, "--batch_size") == "2" and flag(out, "--gradient_accumulation_steps") == "16"
    assert flag(out, "--max_seq_length") == "2048" and "= effective 256 sequences" in out
    added = run({**env, "MODEL_SIZE": "7b", "BATCH_TABLE": str(tmp_path / "table.yaml")}, tokenizer=tokenizer_dir)
    assert added.returncode == 0, added.stderr
    assert flag(added.stdout, "--batch_size") == "1" and flag(added.stdout, "--max_seq_length") == "1024"
    assert flag(added.stdout, "--model_config") == str(REPO / "configs" / "model_config.json")


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "BATCH_TABLE={path}: file not found"),
        ("models: [\n  3b", "{path}: not valid YAML at line 2 (expected ',' or ']', but got '<stream end>')"),
        (
            "cpu_micro_batch: 4\nmodels:\n  3b: {model_config: configs/model_config.json, seq_len: 4096}\n",
            "{path}: models.3b: missing field(s) effective_batch, micro_batch",
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
