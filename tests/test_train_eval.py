"""Evaluation reports plain cross-entropy and its perplexity, whatever objective the model trains with."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, default_data_collator

from moai_llm import MoaiForCausalLM
from moai_llm.losses import causal_lm_loss
from moai_llm.training.arguments import MoaiTrainingArguments
from moai_llm.training.trainer import MoaiTrainer

from .conftest import REPO, tiny_config

LENGTH = 24
OBJECTIVES = [
    {"type": "label_smoothing", "params": {"label_smoothing": 0.1}},
    {"type": "focal", "params": {"gamma": 2.0}},
    {"type": "cross_entropy", "params": {"z_loss_coef": 0.01}},
]


def eval_rows(vocab: int) -> list[dict]:
    """Rows with 23, 11 and 6 labels: a token-weighted mean differs from a mean of row means."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for valid in (23, 11, 6):
        input_ids = torch.randint(3, vocab, (LENGTH,), generator=generator)
        labels = input_ids.clone()
        labels[valid + 1 :] = -100
        rows.append({"input_ids": input_ids, "labels": labels})
    return rows


def plain_cross_entropy(model, rows) -> float:
    """Token-weighted CE over every label of `rows`, from full logits in float64 (independent of the fused loss)."""
    input_ids = torch.stack([row["input_ids"] for row in rows])
    labels = torch.stack([row["labels"] for row in rows])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.double()  # [rows, length, vocab]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100).item()


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda spec: spec["type"] + str(list(spec["params"])))
def test_eval_perplexity_is_cross_entropy_perplexity(objective, tmp_path):
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(loss_config=objective)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # confident predictions: at init they are near uniform, where smoothing ~ CE
    rows = eval_rows(model.config.vocab_size)
    args = MoaiTrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=len(rows),
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
        disable_tqdm=True,
    )
    metrics = MoaiTrainer(model=model, args=args, eval_dataset=rows).evaluate()
    expected = plain_cross_entropy(model, rows)
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert model.config.loss_config == objective  # training keeps its objective
    ids, labels = torch.stack([r["input_ids"] for r in rows]), torch.stack([r["labels"] for r in rows])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        trained = causal_lm_loss(hidden, model.lm_head.weight, labels, loss_config=objective).item()
    assert abs(trained - expected) > 0.01  # the objective itself is not CE: the test can tell them apart


def uneven_rows(vocab: int, valid_counts) -> list[dict]:
    generator = torch.Generator().manual_seed(2)
    rows = []
    for valid in valid_counts:
        input_ids = torch.randint(3, vocab, (LENGTH,), generator=generator)
        labels = input_ids.clone()
        labels[valid + 1 :] = -100
        rows.append({"input_ids": input_ids, "labels": labels})
    return rows


# Five rows in batches of 2: [23, 3], [11, 6], [20]; a mean of batch means weighs the 3-token row like the 23-token one.
UNEVEN = (23, 3, 11, 6, 20)


def test_eval_loss_is_token_weighted_over_uneven_batches(tmp_path):
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config()).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # losses that differ from row to row
    rows = uneven_rows(model.config.vocab_size, UNEVEN)
    args = MoaiTrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, use_cpu=True, report_to="none", disable_tqdm=True
    )
    metrics = MoaiTrainer(model=model, args=args, eval_dataset=rows).evaluate()
    expected = plain_cross_entropy(model, rows)
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    batch_means = [plain_cross_entropy(model, rows[i : i + 2]) for i in (0, 2, 4)]
    stock = (2 * batch_means[0] + 2 * batch_means[1] + batch_means[2]) / 5  # what the Trainer alone reports
    assert abs(stock - expected) > 0.05


TEXTS = ("The king is dead; long live the king.", "Fair is foul, and foul is fair.", "Out, damned spot!")


def text_rows(tokenizer) -> tuple[list[dict], int]:
    """(rows of real text + EOS, padded to LENGTH, and the UTF-8 bytes of what is scored: each text without its
    first token, from the decoded targets)."""
    rows, scored_bytes = [], 0
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        labels = ids + [-100] * (LENGTH - len(ids))
        rows.append({"input_ids": torch.tensor(ids + [0] * (LENGTH - len(ids))), "labels": torch.tensor(labels)})
        scored = tokenizer.decode(ids[1:], skip_special_tokens=True)
        assert text.endswith(scored)
        scored_bytes += len(scored.encode("utf-8"))
    return rows, scored_bytes


def test_eval_logs_bits_per_byte(tmp_path):
    """eval.py's measure at every evaluation: the summed NLL in bits over the bytes of the scored text."""
    tokenizer = AutoTokenizer.from_pretrained(REPO / "moai_llm" / "assets" / "tokenizer")
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(vocab_size=len(tokenizer))).eval()
    rows, scored_bytes = text_rows(tokenizer)
    args = MoaiTrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, use_cpu=True, report_to="none", disable_tqdm=True
    )
    trainer = MoaiTrainer(
        model=model, args=args, eval_dataset=rows, processing_class=tokenizer, data_collator=default_data_collator
    )
    metrics = trainer.evaluate()
    tokens = sum(int((row["labels"][1:] != -100).sum()) for row in rows)
    expected = plain_cross_entropy(model, rows) * tokens / (math.log(2) * scored_bytes)
    assert metrics["eval_bits_per_byte"] == pytest.approx(expected, rel=1e-5)
    assert any("eval_bits_per_byte" in entry for entry in trainer.state.log_history)
    assert "eval_bits_per_byte" not in MoaiTrainer(model=model, args=args, eval_dataset=rows).evaluate()


TWO_RANKS = """
import json, sys, torch
from moai_llm import MoaiForCausalLM
from moai_llm.training.arguments import MoaiTrainingArguments
from moai_llm.training.trainer import MoaiTrainer
from tests.conftest import tiny_config
from tests.test_train_eval import UNEVEN, uneven_rows

torch.manual_seed(0)
model = MoaiForCausalLM(tiny_config()).eval()
with torch.no_grad():
    model.lm_head.weight.mul_(20)
rows = uneven_rows(model.config.vocab_size, UNEVEN)
args = MoaiTrainingArguments(output_dir=sys.argv[1], per_device_eval_batch_size=2, use_cpu=True, report_to="none",
                             disable_tqdm=True, ddp_backend="gloo")
metrics = MoaiTrainer(model=model, args=args, eval_dataset=rows).evaluate()
if args.process_index == 0:
    with open(sys.argv[1] + "/metrics.json", "w") as handle:
        json.dump(metrics, handle)
"""


@pytest.mark.integration
def test_eval_loss_is_token_weighted_over_every_rank(tmp_path):
    """2 CPU ranks, 5 rows in batches of 2: rank 0 reads [23, 3] and [20], rank 1 [11, 6] and a repeat of row 0
    (accelerate evens the ranks out), which must not count."""
    from .distributed_helpers import torchrun

    result = torchrun(TWO_RANKS, [tmp_path], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config()).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    expected = plain_cross_entropy(model, uneven_rows(model.config.vocab_size, UNEVEN))
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
