"""README "Coming from moai-llm": each old name, flag, env var, config key or import path works as documented."""

import json
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F

from moai_llm.training.cli import UsageError, parse_args

from .conftest import REPO


def test_dataset_and_dataset_config():
    from moai_llm.training.data_setup import data_spec

    _, data_args, _ = parse_args(["--dataset", "wikitext", "--dataset_config", "wikitext-2-raw-v1"])
    assert data_spec(data_args).datasets == ["wikitext:wikitext-2-raw-v1"]


def test_pretrained_model():
    model_args, _, training_args = parse_args(["--mode", "sft", "--pretrained_model", "outputs/test/final_model"])
    assert model_args.pretrained_model == "outputs/test/final_model" and training_args.mode == "sft"


def test_bare_bf16_and_gradient_checkpointing_flags():
    _, _, args = parse_args(["--bf16", "--gradient_checkpointing", "--use_cpu", "true"])
    assert args.bf16 is True and args.gradient_checkpointing is True
    _, _, args = parse_args(["--bf16", "false", "--gradient_checkpointing", "false"])
    assert args.bf16 is False and args.gradient_checkpointing is False


@pytest.fixture(scope="module")
def language_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("langs")
    rows = [json.loads(line) for line in open(REPO / "moai_llm/assets/sample/pretrain.jsonl", encoding="utf-8")]
    for lang in ("ko", "en"):
        texts = [r["text"] for r in rows if r.get("lang") == lang] or [r["text"] for r in rows]
        (folder / f"{lang}.txt").write_text("\n".join(texts), encoding="utf-8")
    return folder


def test_old_tokenizer_workflow_multilingual_prefix_then_base(language_files, tmp_path):
    """The old README's steps: a multilingual base under OUTPUT_DIR/PREFIX, then an extension of it."""
    from tokenizers import Tokenizer

    from train_tokenizer import main as cli

    out = tmp_path / "tokenizers"
    ko, en = language_files / "ko.txt", language_files / "en.txt"
    assert cli(["--multilingual", "ko", "en", "--lang_files", f"ko={ko}", f"en={en}", "--vocab_size", "600",
                "--max_samples_per_lang", "200", "--turbo", "--output_dir", str(out),
                "--model_prefix", "moai_multilingual"]) == 0
    base = Tokenizer.from_file(str(out / "moai_multilingual" / "tokenizer.json"))
    assert cli(["--base_tokenizer", str(out / "moai_multilingual"), "--input_files", str(ko), "--vocab_size", "700",
                "--turbo", "--output_dir", str(out), "--model_prefix", "moai_alpaca"]) == 0
    extended = Tokenizer.from_file(str(out / "moai_alpaca" / "tokenizer.json"))
    assert extended.get_vocab_size() > base.get_vocab_size()
    assert all(extended.token_to_id(token) == i for token, i in base.get_vocab().items())


@pytest.mark.parametrize("mode", ["--fast", "--turbo", "--ultrafast"])
def test_speed_mode_flags(mode, language_files, tmp_path):
    from train_tokenizer import main as cli

    assert cli(["--input_files", str(language_files / "en.txt"), "--vocab_size", "400", mode,
                "--output_dir", str(tmp_path)]) == 0
    assert (tmp_path / "tokenizer.json").is_file()


def test_pretrain_sh_num_gpus_gpu_memory_gradient_accumulation():
    env = {**os.environ, "DRY_RUN": "1", "NUM_GPUS": "8", "GPU_MEMORY": "48", "MODEL_SIZE": "2b",
           "GRADIENT_ACCUMULATION_STEPS": "8"}
    result = subprocess.run(["bash", str(REPO / "pretrain.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "per-device 2 x processes 8 x accumulation 8 = effective 128" in result.stdout
    assert "--nproc_per_node 8" in result.stdout and "--gradient_accumulation_steps 8" in result.stdout


def _yaml(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_old_yaml_loss_section(tmp_path):
    from moai_llm.training.run import loss_config

    path = _yaml(tmp_path, """
loss:
  type: "multi_objective"
  params:
    ce_weight: 0.6
    focal_weight: 0.3
    smooth_weight: 0.1
    focal_gamma: 2.0
    smoothing: 0.1
""")
    model_args, _, _ = parse_args(["--config", path])
    assert model_args.loss_type == "multi_objective"
    spec = loss_config(model_args)
    from moai_llm.losses import create_loss_function

    objective = create_loss_function(spec).objective
    assert (objective.ce_weight, objective.focal_weight, objective.smooth_weight) == (0.6, 0.3, 0.1)
    assert objective.label_smoothing == 0.1 and objective.focal_gamma == 2.0


def test_new_yaml_loss_section_and_mixed_forms(tmp_path):
    model_args, _, _ = parse_args(["--config", _yaml(tmp_path, "loss:\n  loss_type: focal\n")])
    assert model_args.loss_type == "focal"
    with pytest.raises(UsageError, match="section 'loss' mixes the old form"):
        parse_args(["--config", _yaml(tmp_path, "loss:\n  type: focal\n  z_loss_coef: 0.1\n")])


def test_hierarchical_balance_packer_old_call():
    from moai_llm.data import HierarchicalBalancePacker

    sequences = [list(range(n)) for n in (300, 8000, 17, 4000, 4100, 90, 8192, 1)]
    packer = HierarchicalBalancePacker(max_seq_length=8192, num_bins=8)
    packs = packer.pack(sequences)
    assert sorted(i for pack in packs for i in pack) == list(range(len(sequences)))
    assert all(sum(len(sequences[i]) for i in pack) <= 8192 for pack in packs)


def test_chunked_cross_entropy_loss_old_call():
    from moai_llm.losses import chunked_cross_entropy_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 33, 91)
    labels = torch.randint(0, 91, (2, 33))
    labels[0, :4] = -100
    shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
    loss = chunked_cross_entropy_loss(shift_logits, shift_labels, chunk_size=2048, ignore_index=-100)
    reference = F.cross_entropy(shift_logits.reshape(-1, 91).double(), shift_labels.reshape(-1), ignore_index=-100)
    assert abs(loss.item() - reference.item()) <= 1e-6 * reference.item()


def test_old_yarn_rope_scaling_through_the_old_import_path():
    from moai_llm.config import MoaiConfig

    config = MoaiConfig(max_position_embeddings=131072, rope_scaling={
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "alpha": 1.0, "beta": 32.0})
    rope = config.rope_parameters
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0
    assert rope["original_max_position_embeddings"] == 32768
    assert (rope["beta_slow"], rope["beta_fast"]) == (1.0, 32.0)
    import moai_llm

    assert MoaiConfig is moai_llm.MoaiConfig
