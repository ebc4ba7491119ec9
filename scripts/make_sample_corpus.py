"""Cut the bundled pretraining sample from ../shared/corpora (run once; output is committed).

Documents are scenes of three Shakespeare plays and paragraphs-groups of Korean statutes and bills,
so the sample has real document boundaries for packing and a held-out split.
"""

import argparse
import json
import re
from pathlib import Path

PLAYS = ["macbeth.txt", "tempest.txt", "midsummer_nights_dream.txt"]
KO_FILES = ["kolaw/constitution.txt"] + [f"kobill/18098{n}.txt" for n in range(90, 100)]
TARGET_CHARS = 3000


def split_scenes(text: str) -> list[str]:
    parts = re.split(r"\n(?=(?:SCENE|Scene) [IVXL]+\.)", text)
    return [p.strip() for p in parts if len(p.strip()) > 200]


def group_paragraphs(text: str, target: int = TARGET_CHARS) -> list[str]:
    docs, current = [], []
    for para in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        para = para.strip()
        if not para:
            continue
        current.append(para)
        if sum(len(p) for p in current) >= target:
            docs.append("\n\n".join(current))
            current = []
    if current:
        docs.append("\n\n".join(current))
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpora", default="../shared/corpora")
    parser.add_argument("--out", default="moai_llm/assets/sample/pretrain.jsonl")
    args = parser.parse_args()
    root = Path(args.corpora)
    rows = []
    for name in PLAYS:
        for doc in split_scenes((root / "en/shakespeare" / name).read_text(encoding="utf-8")):
            rows.append({"text": doc, "source": f"en/shakespeare/{name}", "lang": "en"})
    for name in KO_FILES:
        for doc in group_paragraphs((root / "ko" / name).read_text(encoding="utf-8")):
            rows.append({"text": doc, "source": f"ko/{name}", "lang": "ko"})
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} documents to {args.out}")


if __name__ == "__main__":
    main()
