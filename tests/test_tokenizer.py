"""Tokenizer training, extension, bundled default and the train_tokenizer.py CLI."""

import json

import pytest
import torch
from tokenizers import Tokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM

from moai_llm.loading import BUNDLED_TOKENIZER, SPECIAL_TOKENS, load_tokenizer
from moai_llm.tokenizer.extend import extend_tokenizer
from moai_llm.tokenizer.train import MODES, train_tokenizer, wrap
from train_tokenizer import main as cli

from .conftest import REPO, shared_corpora

SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "대한민국은 민주공화국이다. 모든 권력은 국민으로부터 나온다.",
    "吾輩は猫である。名前はまだ無い。",
    "人人生而自由，在尊严和权利上一律平等。",
    "emoji 🙂🚀👩‍👩‍👧 and ZWJ",
    "def f(x):\n\treturn {'a': [x, 1.5e-3]}  # code\n",
    "  mixed   whitespace \t\t and\n\n\nnewlines  ",
    "windows\r\nline\r\nendings\r\n",
    "\u00e9 vs e\u0301 (NFC vs NFD) and ﬁ ligature, \u200b zero width",
]


def _english():
    corpora = shared_corpora()
    if corpora:
        return (corpora / "en/shakespeare/hamlet.txt").read_text(encoding="utf-8")[:60000].split("\n")
    return [json.loads(line)["text"] for line in open(REPO / "moai_llm/assets/sample/pretrain.jsonl")][:20]


def _korean():
    corpora = shared_corpora()
    if corpora:
        return (corpora / "ko/kolaw/constitution.txt").read_text(encoding="utf-8").split("\n")
    rows = [json.loads(line) for line in open(REPO / "moai_llm/assets/sample/pretrain.jsonl")]
    return [r["text"] for r in rows if r["lang"] == "ko"]


@pytest.fixture(scope="module")
def english_tokenizer():
    return train_tokenizer(_english(), 600, show_progress=False)


def test_special_token_ids_are_fixed(english_tokenizer):
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert english_tokenizer.token_to_id(token) == expected_id


@pytest.mark.parametrize("mode", list(MODES))
def test_round_trip_is_exact_in_every_mode(mode):
    tokenizer = wrap(train_tokenizer(_english()[:2000] + SAMPLES, 500, mode=mode, show_progress=False))
    texts = SAMPLES + _korean()[:20] + _english()[:50]
    corpora = shared_corpora()
    if corpora:
        texts.append((corpora / "ko/kolaw/constitution.txt").read_text(encoding="utf-8")[:5000])  # CRLF, long lines
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids


def test_bundled_tokenizer_and_chat_template():
    tokenizer = load_tokenizer(str(BUNDLED_TOKENIZER))
    assert len(tokenizer) == 8192
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    text = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "안녕?"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "More"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n안녕?<|im_end|>\n"
        "<|im_start|>assistant\nHi.<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == 5 and 6 in ids
    for text in SAMPLES:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_extension_keeps_ids_and_merges_and_lowers_korean_fertility(english_tokenizer):
    korean = _korean()
    base = json.loads(english_tokenizer.to_str())
    extended = extend_tokenizer(english_tokenizer, korean, 900)
    data = json.loads(extended.to_str())
    for token, token_id in base["model"]["vocab"].items():
        assert data["model"]["vocab"][token] == token_id
    assert data["model"]["merges"][: len(base["model"]["merges"])] == base["model"]["merges"]
    assert extended.get_vocab_size() == 900
    text = "\n".join(korean[:40])
    before = len(english_tokenizer.encode(text).ids)
    after = len(extended.encode(text).ids)
    assert after < 0.8 * before
    assert extended.decode(extended.encode(text).ids) == text
    # a model trained with the base grows its embeddings and keeps working
    config = Qwen3Config(
        vocab_size=english_tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    model = Qwen3ForCausalLM(config).eval()
    old_ids = torch.tensor([english_tokenizer.encode("the king is dead").ids])
    before_logits = model(old_ids).logits
    old_vocab = config.vocab_size
    model.resize_token_embeddings(extended.get_vocab_size(), mean_resizing=False)
    assert torch.allclose(model(old_ids).logits[..., :old_vocab], before_logits, atol=1e-5)
    assert model(torch.tensor([extended.encode(text[:200]).ids])).logits.shape[-1] == 900


def test_cli_trains_and_extends(tmp_path):
    corpus = tmp_path / "en.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in _english()[:3000]), encoding="utf-8")
    assert cli(["--input_files", str(corpus), "--vocab_size", "400", "--output_dir", str(tmp_path / "base")]) == 0
    ko = tmp_path / "ko.txt"
    ko.write_text("\n".join(_korean()), encoding="utf-8")
    assert (
        cli(
            [
                "--base_tokenizer",
                str(tmp_path / "base"),
                "--input_files",
                str(ko),
                "--vocab_size",
                "600",
                "--output_dir",
                str(tmp_path / "ext"),
            ]
        )
        == 0
    )
    tokenizer = load_tokenizer(str(tmp_path / "ext"))
    assert len(tokenizer) == 600 and tokenizer.chat_template


def test_cli_multilingual_local_files_and_evaluate(tmp_path, capsys):
    en, ko = tmp_path / "en.txt", tmp_path / "ko.txt"
    en.write_text("\n".join(_english()[:3000]), encoding="utf-8")
    ko.write_text("\n".join(_korean()), encoding="utf-8")
    assert (
        cli(
            [
                "--multilingual",
                "ko",
                "en",
                "--lang_files",
                f"ko={ko}",
                f"en={en}",
                "--max_samples_per_lang",
                "300",
                "--vocab_size",
                "500",
                "--output_dir",
                str(tmp_path / "multi"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        cli(
            [
                "--evaluate",
                str(tmp_path / "multi"),
                "--compare",
                str(BUNDLED_TOKENIZER),
                "--lang_files",
                f"ko={ko}",
                f"en={en}",
                "--max_samples_per_lang",
                "50",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| ko |" in out and "| en |" in out and "50/50" in out


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda p: ["--input_files", str(p / "missing.txt")], "missing.txt: no such file"),
        (lambda p: ["--input_files", str(p / "empty.txt")], "empty.txt: file has no text"),
        (lambda p: ["--input_files", str(p / "ok.txt"), "--vocab_size", "100"], "smaller than 263"),
        (lambda p: ["--multilingual", "xx", "--lang_files", f"xx={p / 'ok.txt'}"], "unknown language code 'xx'"),
        (
            lambda p: ["--base_tokenizer", str(p / "unigram"), "--input_files", str(p / "ok.txt")],
            "not a byte-level BPE",
        ),
        (lambda p: ["--input_files", str(p / "bad.jsonl")], "bad.jsonl:1: no column 'text'"),
        (lambda p: ["--lang_files", "ko"], "expected LANG=PATH"),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, capsys, make_args, message):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "ok.txt").write_text("hello world\n" * 50)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    unigram = train_tokenizer(["hello world"] * 50, 300, mode="ultrafast", show_progress=False)
    wrap(unigram).save_pretrained(tmp_path / "unigram")
    assert cli(make_args(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_nfkc_only_when_asked():
    plain = train_tokenizer(SAMPLES * 5, 300, show_progress=False)
    nfkc = train_tokenizer(SAMPLES * 5, 300, normalization="nfkc", show_progress=False)
    assert plain.decode(plain.encode("ﬁ").ids) == "ﬁ"
    assert nfkc.decode(nfkc.encode("ﬁ").ids) == "fi"
    assert isinstance(Tokenizer.from_str(plain.to_str()), Tokenizer)


def test_inputs_read_every_format_training_reads_with_its_errors(tmp_path):
    """The tokenizer's inputs go through data.sources: .csv, .json arrays, .parquet and .txt (by --sample_by), and
    a bad file stops with training's own one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from moai_llm.data import DataError
    from moai_llm.data.sources import iter_records
    from moai_llm.tokenizer.inputs import file_texts

    texts = ["first document", "second, with a comma", "third"]
    (tmp_path / "a.csv").write_text("text,other\n" + "".join(f'"{t}",x\n' for t in texts))
    (tmp_path / "b.json").write_text(json.dumps([{"text": t} for t in texts]))
    pq.write_table(pa.table({"text": texts}), tmp_path / "c.parquet")
    (tmp_path / "d.txt").write_text("one line\nanother line\n\nnew paragraph\n")
    for name in ("a.csv", "b.json", "c.parquet"):
        assert list(file_texts([str(tmp_path / name)])) == texts
    assert list(file_texts([str(tmp_path / "d.txt")])) == ["one line", "another line", "new paragraph"]
    paragraphs = list(file_texts([str(tmp_path / "d.txt")], sample_by="paragraph"))
    assert paragraphs == ["one line\nanother line", "new paragraph"]
    (tmp_path / "e.xml").write_text("<text>x</text>")
    (tmp_path / "f.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    for name, message in (("e.xml", "e.xml: unsupported file type"), ("f.jsonl", "f.jsonl:2: malformed JSON")):
        with pytest.raises(DataError, match=message) as training:
            list(iter_records(str(tmp_path / name)))
        with pytest.raises(DataError) as tokenizer:
            list(file_texts([str(tmp_path / name)]))
        assert str(tokenizer.value) == str(training.value)
