"""configs/batch_table.yaml and its reader: the numbers pretrain.sh plans from, the row choice, and bad tables as
one-line errors that name the file and field (pretrain.sh's use of it is in test_pretrain_sh.py)."""

import pytest
import yaml

from moai_llm.errors import UsageError
from moai_llm.training.batch_table import Plan, load_table, plan

from .conftest import REPO

TABLE = REPO / "configs" / "batch_table.yaml"


def test_table_holds_the_planned_numbers():
    def row(config, seq_len, effective_batch):
        return {"model_config": f"configs/{config}", "seq_len": seq_len, "effective_batch": effective_batch}

    assert load_table(str(TABLE)) == {
        "cpu_micro_batch": 4,
        "models": {  # no micro-batch overrides: the memory model plans them (plan.py)
            "tiny": {**row("model_config_tiny.json", 256, 128), "micro_batch": {}},
            "moe_tiny": {**row("model_config_moe_tiny.json", 256, 128), "micro_batch": {}},
            "2b": {**row("model_config_2b.json", 4096, 512), "micro_batch": {}},
            "3b": {**row("model_config.json", 4096, 512), "micro_batch": {}},
            "16b": {**row("model_config_16b.json", 4096, 1024), "micro_batch": {}},
            "moe_a2b": {**row("model_config_moe_a2b.json", 4096, 512), "micro_batch": {}},
        },
    }
    for size in ("tiny", "moe_tiny", "2b", "3b", "16b", "moe_a2b"):
        assert (REPO / load_table(str(TABLE))["models"][size]["model_config"]).is_file()


def test_an_override_row_takes_the_largest_memory_not_above_the_card(tmp_path):
    path = tmp_path / "table.yaml"
    path.write_text(one_row(micro_batch={24: 1, 48: 2, 80: 4, 141: 8}))
    table = load_table(str(path))
    assert plan(table, "tiny", 47) == Plan("c.json", 256, 128, 1)
    assert [plan(table, "tiny", gb).micro_batch for gb in (16, 24, 48, 79, 80, 1000)] == [None, 1, 2, 2, 4, 8]
    assert plan(table, "tiny", None).micro_batch == 4  # CPU processes
    assert plan(load_table(str(TABLE)), "16b", 80).micro_batch is None  # planned
    with pytest.raises(UsageError, match=r"MODEL_SIZE=70b has no batch-table row \(known: tiny"):
        plan(table, "70b", 80)


def one_row(**changes) -> str:
    """A table with one size, `tiny`, whose row has `changes` applied (None removes a field)."""
    row = {"model_config": "c.json", "seq_len": 256, "effective_batch": 128, "micro_batch": {0: 8}, **changes}
    return yaml.safe_dump({"cpu_micro_batch": 4, "models": {"tiny": {k: v for k, v in row.items() if v is not None}}})


@pytest.mark.parametrize(
    "text, message",
    [
        ("models: [\n  tiny", "not valid YAML at line 2"),
        ("- 1\n- 2\n", "needs exactly the top-level keys cpu_micro_batch and models"),
        (one_row() + "extra: 1\n", "needs exactly the top-level keys"),
        (
            one_row().replace("cpu_micro_batch: 4", "cpu_micro_batch: 0"),
            "cpu_micro_batch must be an integer >= 1, not 0",
        ),
        ("cpu_micro_batch: 4\nmodels: {}\n", "models must map each MODEL_SIZE"),
        ("cpu_micro_batch: 4\nmodels: {tiny: 8}\n", "models.tiny must be a mapping"),
        (one_row(seq_len=None, effective_batch=None), "models.tiny: missing field(s) seq_len, effective_batch"),
        (one_row(micro_batch=None, model_config=None), "models.tiny: missing field(s) model_config"),
        (one_row(seq=1), "models.tiny: unknown field(s) seq"),
        (one_row(seq_len="long"), "models.tiny.seq_len must be an integer >= 1, not 'long'"),
        (one_row(effective_batch=True), "models.tiny.effective_batch must be an integer >= 1, not True"),
        (one_row(micro_batch={80: "four"}), "models.tiny.micro_batch.80 must be an integer >= 1, not 'four'"),
        (one_row(micro_batch={"80GB": 4}), "models.tiny.micro_batch GPU memory must be an integer >= 0, not '80GB'"),
        (one_row(micro_batch={}), "models.tiny.micro_batch must map GPU memory in GB"),
        (one_row(model_config=3), "models.tiny.model_config must be a file path"),
    ],
)
def test_bad_tables_name_file_and_field(text, message, tmp_path):
    path = tmp_path / "table.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        load_table(str(path))
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_unreadable_table(tmp_path):
    with pytest.raises(UsageError, match="cannot be read"):
        load_table(str(tmp_path / "missing.yaml"))


def test_documented_table_matches_the_plans():
    """The plan table in docs/scaling.md shows what pretrain.sh plans for 8 GPUs of each size
    (launch_plan.default_plan)."""
    from moai_llm.training.launch_plan import default_plan, describe

    header = "| MODEL_SIZE (8 GPUs) | 24 GB | 40 GB | 48 GB | 80 GB | 141 GB |"
    text = (REPO / "docs" / "scaling.md").read_text(encoding="utf-8")
    assert header in text, f"docs/scaling.md has no plan table ({header})"
    lines = text.split(header, 1)[1].splitlines()[2:]
    table = load_table(str(TABLE))
    shown = set()
    for line in lines:
        if not line.startswith("|"):
            break
        size, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        shown.add(size)
        row = table["models"][size]
        config, seq, batch = str(REPO / row["model_config"]), row["seq_len"], row["effective_batch"]
        expected = [describe(default_plan(config, gb, 8, seq, batch)) for gb in (24, 40, 48, 80, 141)]
        assert cells == expected, size
    assert shown == set(table["models"])
