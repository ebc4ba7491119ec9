"""Where the data comes from: one place per run or stage, never a second one dropped without a word."""

import json

import pytest

from moai_llm.data import DataError, DataSpec, MixtureSource
from moai_llm.data.mixing import check_disjoint
from moai_llm.data.pipeline import mixture_sources
from moai_llm.errors import UsageError
from moai_llm.training.cli import parse_args


def corpus(path, rows=4):
    path.write_text(
        "".join(json.dumps({"text": f"doc {i}", "body": f"b {i}", "domain": "news"}) + "\n" for i in range(rows))
    )
    return str(path)


def config(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_train_file_on_the_command_line_replaces_the_yaml_mixture(tmp_path, caplog):
    mix, other = corpus(tmp_path / "mix.jsonl"), corpus(tmp_path / "other.jsonl")
    yaml = config(tmp_path, f"mixture:\n  - {{name: {mix}, ratio: 1}}\n")
    with caplog.at_level("INFO"):
        _, data_args, _ = parse_args(["--config", yaml, "--train_file", other, "--output_dir", str(tmp_path / "o")])
    assert data_args.train_file == [other] and not data_args.mixture
    assert "--train_file on the command line replaces the mixture of" in caplog.text
    _, data_args, _ = parse_args(["--config", yaml, "--output_dir", str(tmp_path / "o")])
    assert [s.name for s in data_args.mixture] == [mix] and not data_args.train_file


def test_a_yaml_or_a_spec_with_a_mixture_and_files_is_refused(tmp_path):
    mix = corpus(tmp_path / "mix.jsonl")
    yaml = config(tmp_path, f"train_file: [{mix}]\nmixture:\n  - {{name: {mix}}}\n")
    with pytest.raises(UsageError, match="gives both a mixture and train_file"):
        parse_args(["--config", yaml, "--output_dir", str(tmp_path / "o")])
    with pytest.raises(DataError, match="data sources given twice: a mixture and --train_file/--dataset"):
        mixture_sources(DataSpec(train_files=[mix], mixture=[{"name": mix}]))


def test_a_stage_naming_its_data_replaces_the_runs_mixture(tmp_path):
    mix, mid = corpus(tmp_path / "mix.jsonl"), corpus(tmp_path / "mid.jsonl")
    yaml = config(
        tmp_path,
        f"mixture:\n  - {{name: {mix}}}\nstages:\n  - {{name: base}}\n  - {{name: mid, train_file: [{mid}]}}\n",
    )
    _, _, args = parse_args(["--config", yaml, "--output_dir", str(tmp_path / "o")])
    base, middle = args.stages
    assert [s.name for s in base.data_args.mixture] == [mix]
    assert middle.data_args.train_file == [mid] and not middle.data_args.mixture


def test_a_yaml_file_name_given_as_a_string_is_one_source(tmp_path):
    from moai_llm.training.data_setup import data_spec

    one, two = corpus(tmp_path / "one.jsonl"), corpus(tmp_path / "two.jsonl")
    yaml = config(tmp_path, f"train_file: {one}\nstages:\n  - {{name: s, train_file: {two}}}\n")
    _, data_args, args = parse_args(["--config", yaml, "--output_dir", str(tmp_path / "o")])
    assert data_spec(data_args).train_files == [one]
    assert data_spec(args.stages[0].data_args).train_files == [two]


def test_text_column_reaches_mixture_sources_without_a_text_field(tmp_path):
    a, b = corpus(tmp_path / "a.jsonl"), corpus(tmp_path / "b.jsonl")
    spec = DataSpec(mixture=[{"name": a}, {"name": b, "text_field": "text"}], text_column="body")
    assert [s.text_field for s in mixture_sources(spec)] == ["body", "text"]


def test_streaming_on_a_mixture_source_reads_a_shard_on_every_rank(tmp_path):
    mix = corpus(tmp_path / "mix.jsonl")
    yaml = config(tmp_path, f"mixture:\n  - {{name: {mix}, streaming: true}}\n")
    _, _, args = parse_args(["--config", yaml, "--output_dir", str(tmp_path / "o"), "--max_steps", "2"])
    assert args.accelerator_config.dispatch_batches is False


def test_one_file_in_two_sources_with_overlapping_domains_is_refused(tmp_path):
    path = corpus(tmp_path / "c.jsonl")
    with pytest.raises(DataError, match=r"c.jsonl is in two sources .*both keep domain 'news'"):
        check_disjoint([MixtureSource(path, domains=["web", "news"]), MixtureSource(path, domains=["news"])])
    with pytest.raises(DataError, match="c.jsonl is in two sources"):
        check_disjoint([MixtureSource(path), MixtureSource(path, domains=["news"])])
    check_disjoint([MixtureSource(path, domains=["web"]), MixtureSource(path, domains=["news", "blog"])])


def test_a_txt_file_is_cut_into_documents_by_sample_by(tmp_path):
    from moai_llm.data.sources import iter_records

    path = tmp_path / "lines.txt"
    path.write_text("first doc\nsecond doc\n\nthird doc\n")
    texts = {by: [r["text"] for r in iter_records(str(path), sample_by=by)] for by in ("document", "paragraph", "line")}
    assert texts["document"] == ["first doc\nsecond doc\n\nthird doc\n"]
    assert texts["paragraph"] == ["first doc\nsecond doc", "third doc"]
    assert texts["line"] == ["first doc", "second doc", "third doc"]
    (tmp_path / "book.txt").write_text("a book")
    mixture = [{"name": str(path)}, {"name": str(tmp_path / "book.txt"), "sample_by": "document"}]
    spec = DataSpec(mixture=mixture, sample_by="line")
    assert [s.sample_by for s in mixture_sources(spec)] == ["line", "document"]


def test_a_json_file_is_read_record_by_record(tmp_path, monkeypatch):
    from moai_llm.data import sources

    monkeypatch.setattr(sources, "JSON_CHUNK", 7)  # records cross chunk boundaries
    rows = [{"text": f"record {i} é"} for i in range(5)]
    array, lines = tmp_path / "array.json", tmp_path / "lines.json"
    array.write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    lines.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert list(sources.iter_records(str(array))) == rows
    assert list(sources.iter_records(str(lines))) == rows  # JSON Lines named .json: every line, not one value
    (tmp_path / "bad.json").write_text('[{"text": "a"}, {"text": oops}]')
    with pytest.raises(DataError, match=r"bad.json\[1\]: malformed JSON"):
        list(sources.iter_records(str(tmp_path / "bad.json")))
    (tmp_path / "col.json").write_text('[{"text": "a"}, {"body": "b"}]')
    with pytest.raises(DataError, match=r"col.json\[1\]: no column 'text'; columns: \['body'\]"):
        list(sources.iter_records(str(tmp_path / "col.json")))


def test_a_hub_source_is_keyed_and_read_at_its_resolved_revision(tmp_path, monkeypatch):
    import types

    import datasets
    import huggingface_hub

    from moai_llm.data import row_datasets
    from moai_llm.loading import load_tokenizer
    from moai_llm.training.data_setup import data_spec

    head, loads = {"sha": "1111"}, []
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        huggingface_hub.HfApi, "dataset_info", lambda self, name, revision=None: types.SimpleNamespace(sha=head["sha"])
    )

    def load_dataset(name, config=None, split="train", streaming=False, revision=None, **kwargs):  # offline Hub
        loads.append((name, config, revision))
        return datasets.Dataset.from_dict({"text": [f"{revision} document {i}" for i in range(5)]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    flags = ["--dataset", "wiki@v2", "--dataset_config", "en", "--eval_fraction", "0", "--use_cpu", "true"]
    _, data_args, args = parse_args([*flags, "--output_dir", str(tmp_path)])
    tokenizer, spec = load_tokenizer(), data_spec(data_args, args)
    row_datasets(spec, tokenizer, 64)
    head["sha"] = "2222"  # a new commit on the Hub: a new store, not the old one
    row_datasets(spec, tokenizer, 64)
    assert loads == [("wiki", "en", "1111"), ("wiki", "en", "2222")]
    assert len(list((tmp_path / "data_cache").glob("wiki-*"))) == 2
