"""Local lm-eval tasks for the evaluation tests: no Hub, data written next to the task YAML."""

import json
from pathlib import Path

MC_TASK = """task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
CHOICES = ["red", "a green leaf", "the blue sky over the sea", "an old yellow house at the end of a long road"]
HUB_TASK = """task: local_hub_only
dataset_path: moai-test/not-on-this-machine
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
"""


def write_local_tasks(folder: Path) -> Path:
    """A 3- and 4-choice local multiple-choice task (`local_mc`, 10 documents) whose choices differ in length, so
    that acc_norm (per character) and acc (per choice) pick differently; and a task whose data only the Hub has
    (`local_hub_only`)."""
    rows = [
        {"question": f"Which answer is number {i}?", "choices": CHOICES[: 3 + i % 2], "label": i % (3 + i % 2)}
        for i in range(10)
    ]
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "local_mc.yaml").write_text(MC_TASK.format(data=folder / "mc.jsonl"))
    (folder / "local_hub_only.yaml").write_text(HUB_TASK)
    return folder


def go_offline(monkeypatch) -> None:
    """Nothing may wait for the Hub: the flags are read at import time, so set the module constants too."""
    import datasets
    import huggingface_hub

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
