"""--eval_tasks on 2 sharded CPU ranks (FSDP2 over gloo): every rank scores the benchmark (a forward needs every
rank's shards), none waits on another, rank 0 logs, and the score equals eval.py's on the saved model."""

import json

import pytest

from .distributed_helpers import torchrun
from .eval_helpers import write_local_tasks
from .train_helpers import fast_args, write_tiny_config

pytestmark = pytest.mark.integration  # torchrun ranks and a whole eval.py run

LAUNCH = """
import sys
from moai_llm.training.cli import parse_args
from moai_llm.training.stages import run_all

run_all(*parse_args(sys.argv[1:]))
"""


def test_benchmarks_during_sharded_training(tmp_path, monkeypatch):
    tasks = write_local_tasks(tmp_path)
    run_dir = tmp_path / "run"
    args = fast_args(
        run_dir,
        write_tiny_config(tmp_path),
        "--max_steps",
        "2",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--save_strategy",
        "no",
        "--eval_tasks",
        "local_mc",
        "--eval_tasks_include_path",
        str(tasks),
        "--eval_tasks_limit",
        "6",
        "--ddp_backend",
        "gloo",
        "--fsdp",
        "--fsdp_config",
        "configs/fsdp_config.json",
    )
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = torchrun(LAUNCH, args, tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    logged = [e for e in history if "bench/local_mc" in e]
    assert [e["step"] for e in logged] == [2]  # rank 0 logged once per evaluation

    from moai_llm.evaluation.runner import EvalOptions, evaluate_model
    from moai_llm.evaluation.suites import TaskSpec

    offline = evaluate_model(
        EvalOptions(
            model_path=str(run_dir / "final_model"),
            tasks=[TaskSpec("local_mc", None, 6)],
            include_path=(str(tasks),),
            samples=False,
            precision="fp32",
            output_dir=str(tmp_path / "eval"),
        )
    )
    assert offline["tasks"]["local_mc"]["acc"] == pytest.approx(logged[0]["bench/local_mc/acc"], abs=1e-6)
