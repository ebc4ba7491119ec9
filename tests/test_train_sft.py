"""SFT through train.py: assistant-only labels, LoRA trains only adapters, merged model equals base + adapter."""

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import moai_llm  # noqa: F401
from moai_llm.loading import load_tokenizer
from moai_llm.training.cli import parse_args
from moai_llm.training.data_setup import build_datasets

from .conftest import REPO
from .train_helpers import fast_args, run_inprocess, write_tiny_config

SFT_FILE = str(REPO / "moai_llm" / "assets" / "sample" / "sft_messages.jsonl")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    result = run_inprocess(fast_args(tmp / "run", write_tiny_config(tmp), "--max_steps", "2"))
    return result[0].final_model


@pytest.mark.parametrize("mode, data_file", [("sft", SFT_FILE), ("pretrain", None)])
def test_packing_bins_reach_the_step_sampler(mode, data_file, tmp_path):
    """--packing_bins sets the length groups the step order is shuffled within, for SFT as for pretraining."""
    tokenizer = load_tokenizer()
    flags = [
        "--mode",
        mode,
        "--max_seq_length",
        "128",
        "--output_dir",
        str(tmp_path),
        "--use_cpu",
        "true",
        "--packing_bins",
        "3",
    ] + (["--train_file", data_file] if data_file else [])
    _, data_args, training_args = parse_args(flags)
    train, _, _ = build_datasets(data_args, tokenizer, training_args)
    sampler = train.train_sampler(rows_per_step=1, seed=0)
    assert train.num_bins == 3 and sampler.num_bins == 3
    # the order: steps (here one cost-sorted row each) taken in turn from 3 consecutive cost groups
    order = sampler.order().tolist()
    assert sorted(order) == list(range(len(train)))
    groups = np.array_split(np.arange(len(train)), 3)
    rounds = len(train) // 3
    assert rounds >= 1 and all(step in groups[i % 3] for i, step in enumerate(order[: rounds * 3]))


def test_sft_labels_only_on_assistant_tokens(tmp_path):
    tokenizer = load_tokenizer()
    _, data_args, training_args = parse_args(
        [
            "--mode",
            "sft",
            "--train_file",
            SFT_FILE,
            "--max_seq_length",
            "128",
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
        ]
    )
    train, _, collator = build_datasets(data_args, tokenizer, training_args)
    batch = collator([train[i] for i in range(len(train))])
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assistant = tokenizer.encode("assistant\n", add_special_tokens=False)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    checked = 0
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        # A token may carry a label only inside an assistant turn: after "<|im_start|>assistant\n", up to and
        # including its "<|im_end|>" and the template's newline after it.
        in_answer, answer_start, after_end = False, 0, -1
        for i, (token, label) in enumerate(zip(ids, labels)):
            if token == im_start:
                in_answer = ids[i + 1 : i + 1 + len(assistant)] == assistant
                answer_start = i + 1 + len(assistant)
            if label != -100:
                allowed = (in_answer and i >= answer_start) or (i == after_end and [token] == newline)
                assert label == token and allowed, tokenizer.decode(ids[max(0, i - 8) : i + 1])
                checked += 1
            if token == im_end and in_answer:
                in_answer, after_end = False, i + 1
    assert checked > 50


@pytest.mark.integration  # whole train.py runs
def test_lora_trains_only_adapters_and_merge_equals_base_plus_adapter(base_model, tmp_path):
    args = fast_args(
        tmp_path / "sft",
        str(REPO / "configs" / "model_config_tiny.json"),
        "--mode",
        "sft",
        "--pretrained_model",
        base_model,
        "--train_file",
        SFT_FILE,
        "--max_steps",
        "3",
        "--use_lora",
        "true",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--merge_lora",
        "true",
        "--learning_rate",
        "0.01",
    )
    args.remove("--model_config")
    args.remove(str(REPO / "configs" / "model_config_tiny.json"))
    result = run_inprocess(args)[0]
    base = AutoModelForCausalLM.from_pretrained(base_model).eval()
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "sft" / "adapter")).eval()
    adapter = load_file(str(tmp_path / "sft" / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in name for name in adapter)
    assert any(value.abs().max() > 0 for name, value in adapter.items() if "lora_B" in name)  # B starts at zero
    merged = load_file(str(tmp_path / "sft" / "final_model" / "model.safetensors"))
    scale = 8 / 4
    for name, weight in base_weights.items():
        stem = name.removesuffix(".weight")
        a_key = next((k for k in adapter if k.startswith(f"base_model.model.{stem}.lora_A")), None)
        if a_key is None:
            if name in merged:
                assert torch.equal(merged[name], weight), name  # not adapted: untouched by training
            continue
        b = adapter[a_key.replace("lora_A", "lora_B")]
        torch.testing.assert_close(merged[name], weight + scale * b @ adapter[a_key], rtol=1e-5, atol=1e-6)
    ids = torch.tensor([[5, 100, 200, 300, 6]])
    reloaded = AutoModelForCausalLM.from_pretrained(result.final_model).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.integration  # whole train.py runs
def test_qlora_merge_writes_a_full_precision_model(base_model, tmp_path):
    """--use_qlora --merge_lora: final_model = dequantized NF4 base + B·A·α/r in fp32, a plain checkpoint that loads
    on CPU (peft's own merge re-quantizes to NF4 and leaves a bitsandbytes checkpoint). The run evaluates, so on CPUs
    with AVX512-BF16 bitsandbytes has repacked the weights in place before the merge."""
    bnb = pytest.importorskip("bitsandbytes")  # with CPU 4-bit kernels (checked with 0.50.2); not in the dev extras
    args = fast_args(
        tmp_path / "sft",
        "unused",
        "--mode",
        "sft",
        "--pretrained_model",
        base_model,
        "--train_file",
        SFT_FILE,
        "--max_steps",
        "2",
        "--use_qlora",
        "true",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--merge_lora",
        "true",
        "--learning_rate",
        "0.01",
    )
    args[args.index("--model_config") : args.index("--model_config") + 2] = []
    result = run_inprocess(args)[0]
    config = (tmp_path / "sft" / "final_model" / "config.json").read_text()
    assert "quantization_config" not in config
    merged = load_file(f"{result.final_model}/model.safetensors")
    base = load_file(f"{base_model}/model.safetensors")
    assert merged.keys() == base.keys() and all(value.dtype == torch.float32 for value in merged.values())
    adapter = load_file(str(tmp_path / "sft" / "adapter" / "adapter_model.safetensors"))
    checked = 0
    for name, weight in base.items():
        a_key = next(
            (k for k in adapter if k.startswith(f"base_model.model.{name.removesuffix('.weight')}.lora_A")), None
        )
        if a_key is None:
            continue
        quantized, state = bnb.functional.quantize_4bit(
            weight, blocksize=64, compress_statistics=True, quant_type="nf4"
        )
        dequantized = bnb.functional.dequantize_4bit(quantized, state)
        delta = 2.0 * adapter[a_key.replace("lora_A", "lora_B")] @ adapter[a_key]
        assert delta.abs().max() > 3e-3  # the adapter learned more than the tolerance below
        # 1e-3: bitsandbytes' AVX512-BF16 CPU kernels keep absmax in bf16 once evaluation ran (exact to 1e-6 without)
        torch.testing.assert_close(merged[name], dequantized + delta, rtol=0, atol=1e-3)
        checked += 1
    assert checked == 2 * 7
    reloaded = AutoModelForCausalLM.from_pretrained(result.final_model).eval()
    assert not getattr(reloaded, "is_loaded_in_4bit", False)
    with torch.no_grad():
        assert torch.isfinite(reloaded(torch.tensor([[5, 100, 200, 300, 6]])).logits).all()
