"""Train, extend or evaluate a MOAI tokenizer (byte-level BPE on HuggingFace `tokenizers`).

python train_tokenizer.py --input_files data/ --vocab_size 32000 --output_dir tokenizers/moai
python train_tokenizer.py --multilingual ko en --lang_files ko=ko.txt en=en.txt --max_samples_per_lang 50000 ...
python train_tokenizer.py --base_tokenizer tokenizers/moai --input_files finance/ --vocab_size 40000 ...
python train_tokenizer.py --evaluate tokenizers/moai --compare other/ --lang_files ko=ko.txt en=en.txt
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from tokenizers import Tokenizer

from moai_llm.data.sources import SAMPLE_BY
from moai_llm.errors import UsageError
from moai_llm.flags import Parser
from moai_llm.loading import load_tokenizer
from moai_llm.tokenizer.evaluate import score, table
from moai_llm.tokenizer.extend import extend_tokenizer
from moai_llm.tokenizer.inputs import (
    balanced,
    file_texts,
    hub_texts,
    language_streams,
    sample,
)
from moai_llm.tokenizer.train import MODES, train_tokenizer, wrap

logger = logging.getLogger("train_tokenizer")


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser("train_tokenizer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("inputs")
    src.add_argument(
        "--input_files", nargs="+", default=[], help="files, folders or globs (.txt .jsonl .json .parquet .csv)"
    )
    src.add_argument("--text_column", default="text", help="text field of .jsonl/.json/.parquet/.csv rows")
    src.add_argument(
        "--sample_by", default="line", choices=SAMPLE_BY, help="a .txt document: one line, paragraph or the whole file"
    )
    src.add_argument("--dataset", help="HuggingFace Hub dataset id (streamed; needs network)")
    src.add_argument("--dataset_config", help="config name of --dataset")
    src.add_argument(
        "--multilingual",
        nargs="+",
        default=[],
        metavar="LANG",
        help="languages to balance (ko en ja zh ...): --lang_files, else Hub Wikipedia",
    )
    src.add_argument("--lang_files", nargs="+", default=[], metavar="LANG=PATH", help="local files per language")
    src.add_argument("--max_samples", type=int, help="at most this many documents in all (a seeded sample)")
    src.add_argument("--max_samples_per_lang", type=int, help="at most this many documents per language")
    src.add_argument("--seed", type=int, default=0)
    model = p.add_argument_group("model")
    model.add_argument("--vocab_size", type=int, default=32000)
    model.add_argument("--min_frequency", type=int, help="minimum pair count for a merge (mode default otherwise)")
    model.add_argument("--normalization", default="none", choices=["none", "nfkc"])
    model.add_argument(
        "--base_tokenizer",
        help="extend this byte-level BPE tokenizer (a directory, or its tokenizer.json) instead of training anew",
    )
    speed = model.add_mutually_exclusive_group()
    for name in ("fast", "turbo", "ultrafast"):
        speed.add_argument(f"--{name}", action="store_true", help=f"speed mode '{name}' (see docs/tokenizer.md)")
    out = p.add_argument_group("output")
    out.add_argument("--output_dir", default="tokenizer_out")
    out.add_argument(
        "--model_prefix",
        help="write to OUTPUT_DIR/PREFIX/ (and the raw tokenizers file to "
        "OUTPUT_DIR/PREFIX.json), as the old tool did; default: straight into OUTPUT_DIR",
    )
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--evaluate", metavar="DIR", help="evaluate this tokenizer on --lang_files instead of training")
    ev.add_argument("--compare", nargs="+", default=[], metavar="DIR", help="more tokenizers to put in the table")
    return p.parse_args(argv)


def lang_files(specs: list[str]) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for spec in specs:
        lang, sep, path = spec.partition("=")
        if not sep or not lang or not path:
            raise UsageError(f"--lang_files {spec!r}: expected LANG=PATH")
        files.setdefault(lang, []).append(path)
    return files


def training_texts(args, mode: str):
    fraction = MODES[mode].sample_fraction
    if args.max_samples_per_lang is not None and not (args.multilingual or args.lang_files):
        raise UsageError(
            "--max_samples_per_lang caps each language of --multilingual/--lang_files; "
            "for a single source use --max_samples"
        )
    if args.multilingual or args.lang_files:
        per_lang = lang_files(args.lang_files)
        streams = language_streams(args.multilingual or list(per_lang), per_lang, args.text_column, args.sample_by)
        texts = balanced(streams, args.max_samples_per_lang, fraction, args.seed)
        return sample(texts, 1.0, args.max_samples, args.seed)
    if args.dataset:
        return sample(
            hub_texts(args.dataset, args.dataset_config, args.text_column), fraction, args.max_samples, args.seed
        )
    if not args.input_files:
        raise UsageError("no input: give --input_files, --dataset, or --multilingual/--lang_files")
    texts = file_texts(args.input_files, args.text_column, args.sample_by)
    return sample(texts, fraction, args.max_samples, args.seed)


def evaluate(args) -> None:
    per_lang = lang_files(args.lang_files)
    if not per_lang:
        raise UsageError("--evaluate needs --lang_files LANG=PATH ... to evaluate on")
    texts = {
        lang: list(file_texts(paths, args.text_column, args.sample_by))[: args.max_samples_per_lang]
        for lang, paths in per_lang.items()
    }
    results = {}
    for flag, directory in [("--evaluate", args.evaluate), *(("--compare", path) for path in args.compare)]:
        if not Path(directory).is_dir():
            raise UsageError(f"{flag} {directory}: no such directory")
        tokenizer = load_tokenizer(directory, flag=flag)
        results[directory] = [score(tokenizer, lang, docs) for lang, docs in texts.items()]
    print(table(results))


def train(args) -> None:
    mode = next((m for m in ("fast", "turbo", "ultrafast") if getattr(args, m)), "default")
    texts = training_texts(args, mode)
    if args.base_tokenizer:
        base_file = Path(args.base_tokenizer)
        if base_file.is_dir():
            base_file = base_file / "tokenizer.json"
        if not base_file.is_file():
            raise UsageError(f"--base_tokenizer {args.base_tokenizer}: no tokenizer.json there")
        try:
            base = Tokenizer.from_file(str(base_file))
        except Exception as err:  # tokenizers raises a bare Exception for a file it cannot parse
            reason = str(err).splitlines()[0][:160]
            raise UsageError(f"--base_tokenizer {base_file}: cannot be read ({reason})") from None
        tokenizer = extend_tokenizer(base, texts, args.vocab_size, args.base_tokenizer)
    else:
        tokenizer = train_tokenizer(texts, args.vocab_size, mode, args.min_frequency, args.normalization)
    out = Path(args.output_dir)
    if args.model_prefix:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(out / f"{args.model_prefix}.json"))
        out = out / args.model_prefix
    wrap(tokenizer).save_pretrained(out)
    summary = {"vocab_size": tokenizer.get_vocab_size(), "mode": mode, "output_dir": str(out)}
    print(json.dumps(summary))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        evaluate(args) if args.evaluate else train(args)
    except UsageError as err:
        print(f"train_tokenizer.py: error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
