"""moai_llm.loading: the one model loader (model directory, LoRA adapter), the one tokenizer loader, the markers."""

import json

import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.errors import UsageError
from moai_llm.loading import (
    BUNDLED_TOKENIZER,
    CHAT_END_TOKEN,
    SPECIAL_TOKENS,
    ChatLoadError,
    load_model,
    load_tokenizer,
    write_atomically,
    write_step_marker,
)

from .conftest import tiny_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    MoaiForCausalLM(tiny_config(vocab_size=8192)).save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


def test_bundled_tokenizer_has_the_special_tokens():
    tokenizer = load_tokenizer()
    assert tokenizer.name_or_path == str(BUNDLED_TOKENIZER)
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    assert SPECIAL_TOKENS[-1] == CHAT_END_TOKEN


def test_tokenizer_choice_and_errors(model_dir, tmp_path):
    assert load_tokenizer(None, str(model_dir)).name_or_path == str(model_dir)  # the model's own
    assert load_tokenizer(None, str(tmp_path)).name_or_path == str(BUNDLED_TOKENIZER)  # the model has none
    assert load_tokenizer(str(BUNDLED_TOKENIZER), str(model_dir)).name_or_path == str(BUNDLED_TOKENIZER)
    with pytest.raises(UsageError, match=f"^--tokenizer_path {tmp_path}: no tokenizer.json in the directory$"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(UsageError, match="^tokenizer ./missing: directory not found$"):
        load_tokenizer("./missing", flag="tokenizer")
    with pytest.raises(UsageError, match="^--tokenizer_path owner/name: directory not found$"):
        load_tokenizer("owner/name", training=True)  # train.py's paths are local: no Hub lookup


def test_load_model_directory(model_dir):
    model, tokenizer = load_model(str(model_dir), device="cpu")
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer.name_or_path == str(model_dir) and tokenizer.pad_token_id == 0
    expected = MoaiForCausalLM.from_pretrained(model_dir)
    assert torch.equal(model.lm_head.weight, expected.lm_head.weight)


def test_load_lora_adapter_with_its_base(model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = MoaiForCausalLM.from_pretrained(model_dir)
    adapter = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")  # no tokenizer: the base's is used
    model, tokenizer = load_model(str(tmp_path / "adapter"), device="cpu")
    assert hasattr(model, "peft_config") and tokenizer.name_or_path == str(model_dir)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, adapter.eval()(ids).logits)
    (tmp_path / "orphan").mkdir()
    (tmp_path / "orphan" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None}))
    with pytest.raises(ChatLoadError, match="LoRA adapter without a base; pass --base_model"):
        load_model(str(tmp_path / "orphan"))


def test_load_model_names_a_bad_tokenizer(model_dir, tmp_path):
    with pytest.raises(ChatLoadError, match=f"^tokenizer {tmp_path}: no tokenizer.json in the directory; pass"):
        load_model(str(model_dir), tokenizer_path=str(tmp_path), device="cpu")


def test_load_model_names_corrupt_weights(tmp_path):
    MoaiForCausalLM(tiny_config()).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UsageError, match=f"^--model_path {tmp_path}: cannot be loaded \\(Error while deserializing"):
        load_model(str(tmp_path), device="cpu")


def test_markers_are_written_whole(tmp_path):
    write_step_marker(tmp_path / "done.json", 7)
    write_atomically(tmp_path / "meta.json", "{}")
    write_atomically(tmp_path / "meta.json", '{"a": 1}')  # replaces
    assert json.loads((tmp_path / "done.json").read_text()) == {"global_step": 7}
    assert json.loads((tmp_path / "meta.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.json", "meta.json"]  # no temporary left
