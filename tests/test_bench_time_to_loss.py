"""benchmarks/bench_time_to_loss.py, its one run (time_to_loss_run.py) and report (time_to_loss_report.py): the
clock-based schedule, time-to-loss interpolation, the sweep's winners, the table, the defaults it set, and one tiny
budgeted run through the subprocess path."""

import argparse
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_time_to_loss as bench  # noqa: E402
import time_to_loss_report as report  # noqa: E402
import time_to_loss_run as runner  # noqa: E402


def curve(*points):
    return [{"clock": c, "tokens": t, "step": s, "loss": loss} for c, t, s, loss in points]


def test_schedule_is_train_py_wsd_shape_over_the_clock():
    assert runner.wsd_factor(0.0) == pytest.approx(0.1)  # transformers' warmup starts at min_lr_ratio
    assert runner.wsd_factor(0.025) == pytest.approx(0.55)  # halfway through the 5% warmup
    assert runner.wsd_factor(0.05) == runner.wsd_factor(0.5) == runner.wsd_factor(0.8) == 1.0
    assert runner.wsd_factor(0.9) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)), abs=1e-3)  # 1-sqrt decay
    assert runner.wsd_factor(1.0) == pytest.approx(0.1) == runner.wsd_factor(1.3)  # min_lr_ratio past the budget
    decay = [runner.wsd_factor(0.8 + i / 100) for i in range(21)]
    assert decay == sorted(decay, reverse=True)


def test_time_to_reach_interpolates_the_first_crossing():
    run = curve((0, 0, 0, 9.0), (10, 1000, 5, 7.0), (20, 2000, 10, 5.0), (30, 3000, 15, 6.0), (40, 4000, 20, 4.0))
    assert report.time_to_reach(run, 6.0) == pytest.approx(15.0)  # first crossing, not the later one at 30
    assert report.time_to_reach(run, 6.0, "tokens") == pytest.approx(1500.0)
    assert report.time_to_reach(run, 5.0) == pytest.approx(20.0)
    assert report.time_to_reach(run, 3.9) is None
    assert report.time_to_reach(run, 9.5) == 0


def test_loss_at_interpolates_by_step():
    run = curve((0, 0, 0, 9.0), (10, 1000, 10, 7.0), (20, 2000, 20, 6.0))
    assert report.loss_at(run, "step", 15) == pytest.approx(6.5)
    assert report.loss_at(run, "step", 25) is None


def test_winners_are_the_lowest_final_loss_per_variant():
    runs = [
        {"variant": "stock", "learning_rate": 1e-3, "rows_per_step": 8, "final_loss": 6.5},
        {"variant": "stock", "learning_rate": 3e-3, "rows_per_step": 16, "final_loss": 6.1},
        {"variant": "stock", "learning_rate": 1e-2, "rows_per_step": 8, "final_loss": 6.3},
        {"variant": "moai_muon", "learning_rate": 1e-2, "rows_per_step": 2, "final_loss": 5.5},
    ]
    assert report.winners(runs) == {
        "stock": {"learning_rate": 3e-3, "rows_per_step": 16, "loss": 6.1},
        "moai_muon": {"learning_rate": 1e-2, "rows_per_step": 2, "loss": 5.5},
    }


def test_table_targets_the_best_peers_final_loss():
    def run(points, rows=2):
        totals = {"learning_rate": 1e-3, "rows_per_step": rows, "steps": 20, "tokens": 4000, "tokens_per_s": 100.0}
        return {**totals, "curve": curve(*points), "final_loss": points[-1][3]}

    results = {
        "stock": run([(0, 0, 0, 9.0), (40, 2000, 20, 6.0)]),
        "trl": run([(0, 0, 0, 9.0), (40, 2000, 20, 6.5)]),
        "moai_muon": run([(0, 0, 0, 9.0), (10, 1000, 10, 6.0), (40, 4000, 40, 5.0)]),
        "moai_adamw": run([(0, 0, 0, 9.0), (40, 3000, 20, 6.2)]),
        "moai_muon_random": run([(0, 0, 0, 9.0), (10, 1000, 10, 6.4), (40, 4000, 30, 5.4)]),
    }
    text = report.table(results)
    assert "final held-out loss 6.000" in text
    assert "MOAI + Muon time to target / peer's: 0.25" in text
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()}
    assert "not reached" in lines["MOAI + AdamW"]
    assert "| 10.0 | 1,000 | 0.25x |" in lines["MOAI + Muon"]
    assert "(MOAI + Muon): held-out loss at step 10: 6.000 vs 6.400; at step 20: 5.667 vs 5.900" in text


@pytest.mark.integration  # a whole (tiny) training run in a subprocess
def test_a_budgeted_run_scores_off_the_clock_and_stops(tmp_path):
    args = argparse.Namespace(
        workdir=str(tmp_path), chars=150_000, max_seq_length=128, budget=3.0, points=2, eval_tokens=256, sweep=False
    )
    args.seed = 0
    bench.prepare_workdir(args)
    result = bench.launch(args, "moai_muon", 1e-3, 2)
    points = result["curve"]
    assert [p["clock"] for p in points][0] == 0.0 and len(points) == 3  # the start and every 1/2 of the budget
    assert points[-1]["clock"] >= 3.0 and result["steps"] >= 1 and result["tokens"] > 0
    assert points[-1]["loss"] < points[0]["loss"]
    assert result["eval_tokens"] >= 256


def test_held_out_rows_spread_over_the_held_out_text():

    from moai_llm.loading import load_tokenizer

    tokenizer = load_tokenizer()
    texts = [f"paragraph {i} " + "word " * (5 + i % 40) for i in range(400)]
    rows = runner.held_out_rows(texts, tokenizer, 32, 1000)
    assert all(1 < len(row) <= 32 and row[-1] == tokenizer.eos_token_id or len(row) == 32 for row in rows)
    assert 1000 <= sum(map(len, rows)) < 1000 + 32
    decoded = [tokenizer.decode(row) for row in rows]
    numbers = [int(text.split()[1]) for text in decoded if text.startswith("paragraph")]
    assert numbers[0] < 20 and numbers[-1] > 300  # from the whole held-out list, not only its start


def test_sweep_searches_one_coordinate_at_a_time_and_resumes(tmp_path, monkeypatch):
    launched = []

    def fake_launch(args, variant, learning_rate, rows):  # loss lowest at lr 3e-3 and the second rows per step
        launched.append((variant, learning_rate, rows))
        loss = 6 + abs(math.log10(learning_rate / 3e-3)) + (0 if rows == bench.ROWS_PER_STEP[variant][1] else 0.1)
        return {"variant": variant, "learning_rate": learning_rate, "rows_per_step": rows, "final_loss": loss}

    monkeypatch.setattr(bench, "launch", fake_launch)
    monkeypatch.setattr(bench, "SWEEP_FILE", tmp_path / "sweep.json")
    args = argparse.Namespace(budget=20.0, jobs=2, variants=["moai_muon", "stock"])
    bench.sweep(args)
    assert len(launched) == 10 and launched[:2] == [("moai_muon", 1e-3, 1), ("stock", 1e-3, 8)]
    later = {("moai_muon", 3e-3, 2), ("moai_muon", 3e-3, 4), ("stock", 3e-3, 16), ("stock", 3e-3, 32)}
    assert set(launched[6:]) == later  # the other rows per step at each variant's best learning rate
    saved = bench.json.loads((tmp_path / "sweep.json").read_text())
    assert saved["winners"]["stock"] == {"learning_rate": 3e-3, "rows_per_step": 16, "loss": 6.0}
    launched.clear()
    bench.sweep(args)  # everything is recorded at this budget: nothing runs again
    assert launched == []


def test_no_argument_run_uses_the_swept_winner(tmp_path):
    """The no-argument pretraining run and the shipped YAML: AdamW at the sweep's winning learning rate and tokens per
    step (benchmarks/time_to_loss_sweep.json; the sweep's rows hold 512 tokens)."""
    from moai_llm.training.cli import build_parser, load_yaml_config, parse_args

    winner = bench.json.loads(bench.SWEEP_FILE.read_text())["winners"]["moai_adamw"]
    _, data_args, args = parse_args(["--output_dir", str(tmp_path)])
    assert args.optim == "adamw_torch_fused" and args.learning_rate == winner["learning_rate"]
    assert args.per_device_train_batch_size * data_args.max_seq_length == winner["rows_per_step"] * 512
    shipped = load_yaml_config(str(Path(bench.HERE).parent / "configs" / "training_config.yaml"), build_parser())
    assert shipped["per_device_train_batch_size"] == args.per_device_train_batch_size
    assert shipped["max_seq_length"] == data_args.max_seq_length
