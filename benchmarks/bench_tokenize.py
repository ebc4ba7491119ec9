"""Tokenisation throughput (tokens/s) of the pretraining pipeline on the shared corpus, 1 and 2 processes.

    python benchmarks/bench_tokenize.py [--corpora ../shared/corpora]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import os

    import datasets

    from moai_llm.data.tokenize import tokenize_documents
    from moai_llm.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpora", default=str(REPO.parent / "shared" / "corpora"))
    args = parser.parse_args()
    corpora = Path(args.corpora)
    files = sorted(corpora.rglob("*.txt")) if corpora.is_dir() else []
    texts = [line for f in files for line in f.read_text(encoding="utf-8").split("\n\n") if line.strip()]
    if not texts:
        texts = [line for line in (REPO / "moai_llm/assets/sample/pretrain.jsonl").read_text().splitlines()]
    dataset = datasets.Dataset.from_dict({"text": texts})
    tokenizer = load_tokenizer()
    print(f"{len(texts):,} documents, {sum(map(len, texts)) / 1e6:.1f} M characters, bundled tokenizer")
    print("| processes | seconds | tokens | tokens/s |")
    print("| ---: | ---: | ---: | ---: |")
    for procs in (1, 2):
        os.environ["DATASET_NUM_PROC"] = str(procs)
        with tempfile.TemporaryDirectory() as cache:  # a fresh cache: measure the work, not a cache hit
            start = time.perf_counter()
            ids = tokenize_documents(dataset, tokenizer, cache_dir=cache)["input_ids"]
            seconds = time.perf_counter() - start
        tokens = sum(len(x) for x in ids)
        print(f"| {procs} | {seconds:.2f} | {tokens:,} | {tokens / seconds:,.0f} |")


if __name__ == "__main__":
    main()
