"""Per-language quality of tokenizers: tokens per character and per word, round-trip exactness, vocab use."""

from dataclasses import dataclass


@dataclass
class LanguageScore:
    language: str
    characters: int
    words: int
    tokens: int
    exact: int
    documents: int
    used_ids: int
    vocab_size: int

    @property
    def per_char(self) -> float:
        return self.tokens / max(self.characters, 1)

    @property
    def per_word(self) -> float:
        return self.tokens / max(self.words, 1)


def score(tokenizer, language: str, texts: list[str]) -> LanguageScore:
    """`tokenizer` is a transformers fast tokenizer; texts are documents of one language."""
    used = set()
    chars = words = tokens = exact = 0
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        used.update(ids)
        chars += len(text)
        words += len(text.split())
        tokens += len(ids)
        exact += tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text
    return LanguageScore(language, chars, words, tokens, exact, len(texts), len(used), len(tokenizer))


def table(results: dict[str, list[LanguageScore]]) -> str:
    """Markdown table, one row per tokenizer and language."""
    lines = [
        "| tokenizer | language | tokens/char | tokens/word | round trip | vocab used |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, scores in results.items():
        for s in scores:
            lines.append(
                f"| {name} | {s.language} | {s.per_char:.3f} | {s.per_word:.2f} | "
                f"{s.exact}/{s.documents} | {s.used_ids / s.vocab_size:.1%} |"
            )
    return "\n".join(lines)
