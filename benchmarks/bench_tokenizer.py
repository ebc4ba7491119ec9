"""Tokenizer training per speed mode: throughput (MB/s), peak memory, and fertility per language of the result.

Each mode trains in a fresh subprocess (its peak RSS is its own) on the shared corpus (English plays and Korean
statutes/bills) or, without it, the bundled sample.

    python benchmarks/bench_tokenizer.py [--vocab_size 16000] [--corpora ../shared/corpora]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def corpus_files(corpora: Path) -> dict[str, list[Path]]:
    if corpora.is_dir():
        return {"en": sorted((corpora / "en/shakespeare").glob("*.txt")), "ko": sorted((corpora / "ko").rglob("*.txt"))}
    return {"sample": [REPO / "moai_llm/assets/sample/pretrain.jsonl"]}


def run_mode(mode: str, vocab_size: int, corpora: Path, out: Path) -> dict:
    from moai_llm.tokenizer.inputs import file_texts, sample
    from moai_llm.tokenizer.train import MODES, train_tokenizer, wrap

    files = [str(p) for paths in corpus_files(corpora).values() for p in paths]
    size = sum(Path(f).stat().st_size for f in files)
    start = time.perf_counter()
    texts = sample(file_texts(files), MODES[mode].sample_fraction, None, 0)
    tokenizer = train_tokenizer(texts, vocab_size, mode, show_progress=False)
    seconds = time.perf_counter() - start
    wrap(tokenizer).save_pretrained(out / mode)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "mb_per_s": size / 1e6 / seconds, "peak_mb": peak, "input_mb": size / 1e6}


def fertility(mode_dir: Path, corpora: Path) -> dict[str, float]:
    from moai_llm.loading import load_tokenizer
    from moai_llm.tokenizer.evaluate import score

    tokenizer = load_tokenizer(str(mode_dir))
    result = {}
    for lang, paths in corpus_files(corpora).items():
        texts = [p.read_text(encoding="utf-8") for p in paths[:5]]
        s = score(tokenizer, lang, texts)
        result[lang] = (s.per_char, s.exact == s.documents)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab_size", type=int, default=16000)
    parser.add_argument("--corpora", default=str(REPO.parent / "shared" / "corpora"))
    parser.add_argument("--out", default="/tmp/moai_bench_tokenizer")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    corpora, out = Path(args.corpora), Path(args.out)
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.vocab_size, corpora, out)))
        return
    rows = []
    for mode in ("default", "fast", "turbo", "ultrafast"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--mode",
                mode,
                "--vocab_size",
                str(args.vocab_size),
                "--corpora",
                args.corpora,
                "--out",
                args.out,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append((mode, result, fertility(out / mode, corpora)))
    langs = list(rows[0][2])
    print(
        f"input {rows[0][1]['input_mb']:.1f} MB, vocab {args.vocab_size:,}; fertility = tokens per character "
        "on the first 5 files of each language (round trip exact: yes/no)"
    )
    print("| mode | seconds | MB/s | peak RSS MB | " + " | ".join(f"{lang} tokens/char" for lang in langs) + " |")
    print("| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in langs) + " |")
    for mode, r, fert in rows:
        cells = " | ".join(f"{fert[lang][0]:.3f} ({'yes' if fert[lang][1] else 'NO'})" for lang in langs)
        print(f"| {mode} | {r['seconds']:.1f} | {r['mb_per_s']:.2f} | {r['peak_mb']:.0f} | {cells} |")


if __name__ == "__main__":
    main()
