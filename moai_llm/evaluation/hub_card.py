"""final_model/README.md: a Hugging Face model card (huggingface_hub's ModelCard), so a pushed model shows what it
is, how it was trained and, once eval.py has run, its scores in the `model-index` block the Hub reads.

train.py writes it at the end of a run; eval.py rewrites it with the results (a README.md that train.py did not
write, i.e. one without the `moai-llm` tag, is left alone)."""

import logging
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .report import facts_table, table
from .suites import headline_metric

logger = logging.getLogger(__name__)
TAG = "moai-llm"
HANGUL = re.compile(r"[\uac00-\ud7a3]")
LATIN = re.compile(r"[A-Za-z]")
ENGLISH_WORDS = re.compile(r"\b(the|and|of|to|is|that)\b", re.IGNORECASE)
USAGE = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{path}")
```"""


def detect_languages(texts: list[str]) -> list[str]:
    """`ko` where Hangul is at least a fifth of the letters, `en` where Latin letters with common English words
    are; nothing for text this cannot tell (the card then carries no language)."""
    text = " ".join(texts)
    hangul, latin = len(HANGUL.findall(text)), len(LATIN.findall(text))
    letters = max(hangul + latin, 1)
    languages = []
    if latin / letters >= 0.2 and len(ENGLISH_WORDS.findall(text)) >= 0.01 * max(len(text.split()), 1):
        languages.append("en")
    if hangul / letters >= 0.2:
        languages.append("ko")
    return languages


def card_data(arguments: dict, languages: list[str], model_name: str, moe: bool) -> ModelCardData:
    model, data, training = arguments.get("model", {}), arguments.get("data", {}), arguments.get("training", {})
    hub_datasets = [name for name in data.get("dataset") or [] if not Path(name).exists()]
    mode = training.get("mode", "pretrain")
    return ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=model.get("pretrained_model"),
        datasets=hub_datasets or None,
        language=languages or None,
        tags=[TAG, "qwen3", mode, *(["moe"] if moe else [])],
    )


def render(data: ModelCardData, path: str, facts: dict, training: dict | None, results: dict | None) -> ModelCard:
    mode = next((t for t in data.tags or [] if t in ("pretrain", "sft")), "pretrain")
    what = (
        "a base model from pretraining: it continues text, it does not follow chat turns"
        if mode == "pretrain"
        else ("fine-tuned for chat (ChatML turns)")
    )
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {data.model_name}",
        "",
        f"A Qwen3-architecture causal language model trained with MOAI-LLM; {what}.",
        "",
        "## Architecture",
        "",
        facts_table(facts),
        "",
        "## Training",
        "",
        facts_table(training) if training else "No training record next to the model.",
        "",
        "## Use",
        "",
        USAGE.format(path=path),
        "",
        "## Evaluation",
        "",
    ]
    rows = evaluation_rows(results or {})
    lines += [table(["task", "metric", "value", "shots", "documents"], rows)] if rows else ["Not evaluated yet."]
    lines += ["", "License: not set; add a `license` to the metadata above before publishing.", ""]
    return ModelCard("\n".join(lines))


def evaluation_rows(results: dict) -> list[list]:
    rows = []
    for task in results.get("summary_tasks", []):
        metrics, details = results["tasks"].get(task, {}), (results.get("task_details") or {}).get(task, {})
        metric = headline_metric(task, metrics)
        if metric and isinstance(metrics.get(metric), (int, float)):
            rows.append([task, metric, f"{metrics[metric]:.4f}", details.get("num_fewshot"), details.get("documents")])
    for file, entry in (results.get("perplexity") or {}).items():
        rows.append([Path(file).name, "bits_per_byte", f"{entry['bits_per_byte']:.4f}", 0, entry.get("documents")])
    return rows


def eval_results(results: dict) -> list[EvalResult]:
    """model-index entries: each benchmark's headline metric, and bits per byte of each evaluated file."""
    entries = []
    for task in results.get("summary_tasks", []):
        metrics = results["tasks"].get(task, {})
        metric = headline_metric(task, metrics)
        if metric and isinstance(metrics.get(metric), (int, float)):
            shots = (results.get("task_details") or {}).get(task, {}).get("num_fewshot")
            entries.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=task,
                    dataset_name=task,
                    metric_type=metric.split(",")[0],
                    metric_name=metric,
                    metric_value=round(float(metrics[metric]), 6),
                    metric_args={"num_few_shot": shots} if shots is not None else None,
                )
            )
    for file, entry in (results.get("perplexity") or {}).items():
        entries.append(
            EvalResult(
                task_type="text-generation",
                dataset_type="text",
                dataset_name=Path(file).name,
                metric_type="bits_per_byte",
                metric_value=round(float(entry["bits_per_byte"]), 6),
            )
        )
    return entries


def write_model_card(model_dir, arguments: dict, facts: dict, training: dict | None, languages: list[str]) -> Path:
    """train.py's card: what the model is and how it was trained; no results yet."""
    path = Path(model_dir)
    moe = not facts.get("Mixture of Experts", "no").startswith("no")
    data = card_data(arguments, languages, path.parent.name or path.name, moe)
    card = render(data, str(path), facts, training, None)
    card.save(path / "README.md")
    logger.info("model card written to %s", path / "README.md")
    return path / "README.md"


def update_model_card(model_dir, results: dict) -> Path | None:
    """Put eval.py's results into the card train.py wrote (model-index and the Evaluation table)."""
    path = Path(model_dir) / "README.md"
    if not path.is_file():
        return None
    card = ModelCard.load(path)
    if TAG not in (card.data.tags or []):
        logger.info("%s was not written by train.py: left as it is", path)
        return None
    card.data.eval_results = eval_results(results) or None
    updated = render(card.data, str(model_dir), results.get("model_card") or {}, results.get("training"), results)
    updated.save(path)
    logger.info("model card updated with the results: %s", path)
    return path
