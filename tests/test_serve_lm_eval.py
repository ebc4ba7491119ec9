"""lm-eval against the server: `--model local-completions` (token-id prompt lists, echo, logprobs) scores a local
log-likelihood task as eval.py does on the same model, and each request's log-likelihood is the model's."""

import json

import pytest
import torch

import eval as eval_cli  # the repo's eval.py
from moai_llm.serving import load_models

from .eval_helpers import MC_TASK, go_offline
from .serve_helpers import running_server, save_tiny_model

pytestmark = pytest.mark.integration  # a server, lm-eval's task index and an eval.py run


@pytest.fixture
def offline(monkeypatch):
    go_offline(monkeypatch)


def test_lm_eval_local_completions_matches_eval_py(tmp_path, offline):
    import lm_eval

    from moai_llm.evaluation.benchmarks import task_manager

    model_dir = save_tiny_model(tmp_path / "tiny", max_position_embeddings=256)
    rows = [
        {"question": f"Which word is number {i}?", "choices": [f"word {j}" for j in range(3 + i % 2)], "label": i % 3}
        for i in range(12)
    ]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "local_mc.yaml").write_text(MC_TASK.format(data=tmp_path / "mc.jsonl"))
    argv = ["--model_path", str(model_dir), "--tasks", "local_mc", "--include_path", str(tasks)]
    # fp32 like the server: --precision auto would score in bf16 autocast on CPUs with AMX
    assert (
        eval_cli.main([*argv, "--batch_size", "4", "--precision", "fp32", "--output_dir", str(tmp_path / "eval")]) == 0
    )
    ours = json.loads((tmp_path / "eval" / "results.json").read_text())["tasks"]["local_mc"]

    registry = load_models([("tiny", model_dir)], max_prefill_tokens=32)  # prompts also prefilled in chunks
    with running_server(registry) as url:
        out = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={
                "base_url": f"{url}/v1/completions",
                "model": "tiny",
                "tokenizer_backend": "huggingface",
                "tokenizer": str(model_dir),
                "tokenized_requests": True,
                "batch_size": 4,  # prompt lists of token ids
                "max_retries": 1,
                "max_length": 256,
            },
            tasks=["local_mc"],
            task_manager=task_manager((str(tasks),)),
            log_samples=True,
        )
    served = out["results"]["local_mc"]
    assert served["acc,none"] == pytest.approx(ours["acc"], abs=1e-9)
    assert served["acc_norm,none"] == pytest.approx(ours["acc_norm"], abs=1e-9)
    assert 0 < served["acc,none"] < 1  # the scores decided something

    model, tokenizer = registry.models["tiny"].engine.model, registry.models["tiny"].tokenizer
    for sample in out["samples"]["local_mc"][:3]:
        for (context, continuation), ((loglikelihood, _),) in zip(sample["arguments"], sample["resps"]):
            ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
            ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            expected = sum(logprobs[i - 1, ids[i]].item() for i in range(len(ctx), len(ids)))
            assert loglikelihood == pytest.approx(expected, abs=1e-3)
