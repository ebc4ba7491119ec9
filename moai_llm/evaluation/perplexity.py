"""Perplexity, bits per byte and token accuracy of local text: packed rows, plain cross-entropy, no full logits.

- Documents: an --eval_file is read the way training reads data (`moai_llm.data.sources.iter_records`); each is
  tokenized as in pretraining (no special tokens, EOS appended).
- Scored: every token after a document's first, EOS included (the first has no context; the packed training
  collator never trains it either). Longer documents are cut into `max_length` windows that overlap by one token,
  so every token but the first is scored exactly once. With `stride`, windows of `max_length` move by `stride`
  and score only the tokens the previous one did not: up to `max_length - stride` more tokens of context, about
  `max_length / stride` times the cost.
- Rows: windows packed best-fit decreasing, `position_ids` restarting at every window (docs/model.md, "Packed
  rows"), so no token attends across documents.
- Loss: plain cross-entropy whatever the model trained with, through `losses.score_tokens` (the trainer's eval
  loss uses it too), one `[chunk, vocab]` block at a time; 128 tokens on CPU, to stay in cache (benchmarks/README.md,
  Evaluation), `MoaiConfig.loss_chunk_size` elsewhere. Its row maximum is also the token accuracy's argmax.
- bits per byte = total NLL in nats / (ln 2 x UTF-8 bytes of the scored text): each document without its first
  token (EOS has no bytes; its NLL counts, it says where the document ends).
"""

import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tokenizers.pre_tokenizers import ByteLevel
from tqdm.auto import tqdm

from ..batch_format import IGNORE_INDEX
from ..data.collator import PackedCollator
from ..data.packing import cut, pack
from ..data.sources import is_local, iter_records
from ..data.stats import DataError
from ..errors import UsageError
from ..losses import score_tokens

logger = logging.getLogger(__name__)
BYTE_ALPHABET = frozenset(ByteLevel.alphabet())
CPU_CHUNK = 128  # tokens per [chunk, vocab] logits block on CPU


@dataclass
class PerplexityResult:
    documents: int
    tokens: int  # scored tokens
    nll: float  # summed over scored tokens, nats
    correct: int  # scored tokens whose argmax prediction is the target
    bytes: int  # UTF-8 bytes of the scored text
    input_tokens: int  # tokens fed to the model (no padding)
    seconds: float  # model time (forward + loss)
    windows: int  # documents after cutting long ones into max_length windows
    rows: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / max(self.tokens, 1))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * max(self.bytes, 1))

    @property
    def token_accuracy(self) -> float:
        return self.correct / max(self.tokens, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.input_tokens / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        """The results.json entry: the figures first, then the counts behind them."""
        figures = {
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "token_accuracy": self.token_accuracy,
            "tokens_per_second": self.tokens_per_second,
        }
        return {**figures, **{k: v for k, v in asdict(self).items() if k != "tokens"}}


def read_documents(spec: str, text_column: str = "text") -> list[str]:
    """Non-empty documents of one --eval_file; a missing, unreadable or empty file is a UsageError."""
    if not is_local(spec):
        raise UsageError(f"--eval_file {spec}: no such file")
    try:
        texts = [record.get(text_column) for record in iter_records(spec, text_column=text_column)]
    except DataError as error:
        raise UsageError(f"--eval_file {error}") from None
    if not texts:
        raise UsageError(f"--eval_file {spec}: no records")
    documents = [text for text in texts if isinstance(text, str) and text.strip()]
    if not documents:
        raise UsageError(f"--eval_file {spec}: no non-empty documents")
    if len(documents) < len(texts):
        logger.info("%s: %d empty or non-text records skipped", spec, len(texts) - len(documents))
    return documents


def token_bytes(tokenizer, token_id: int) -> int:
    """UTF-8 bytes of the text one token stands for (exact for byte-level BPE, also for partial characters)."""
    added = tokenizer.added_tokens_decoder.get(token_id)
    if added is not None:
        return len(added.content.encode("utf-8"))
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if piece and set(piece) <= BYTE_ALPHABET:
        return len(piece)  # one alphabet symbol per byte
    return len(tokenizer.decode([token_id]).encode("utf-8"))


def scored_bytes(tokenizer, token_ids: torch.Tensor, cache: dict[int, int]) -> int:
    """UTF-8 bytes of the decoded text of `token_ids` (training's eval targets, for bits per byte). Special tokens
    (EOS, padding, chat markers) have no bytes, as EOS has none in `tokenize_documents`; each id is looked up once
    into `cache`."""
    ids, counts = torch.unique(token_ids.cpu(), return_counts=True)
    special = set(tokenizer.all_special_ids)
    total = 0
    for token_id, count in zip(ids.tolist(), counts.tolist()):
        if token_id not in cache:
            cache[token_id] = 0 if token_id in special else token_bytes(tokenizer, token_id)
        total += cache[token_id] * count
    return total


def windows(ids, max_length: int) -> list:
    """Pieces of at most max_length tokens, each starting with the previous one's last token: training's cutter
    (`data.packing.cut`) with an overlap of one token, the context that the window's first target needs."""
    starts, lengths = cut(np.zeros(1, dtype=np.int64), np.array([len(ids)]), max_length, overlap=1)
    return [ids[start : start + length] for start, length in zip(starts.tolist(), lengths.tolist())]


def sliding_windows(ids, max_length: int, stride: int) -> tuple[list, list[int]]:
    """(windows, context): window k ends at min(max_length + k * stride, len(ids)), reads a full max_length where
    it can, and only reads its first `context[k]` tokens. Windows that end on a grid: not `data.packing.cut`'s."""
    pieces, contexts, end = [], [], 0
    while True:
        stop = min(len(ids), max_length + len(pieces) * stride)
        begin = max(0, stop - max_length)
        pieces.append(ids[begin:stop])
        contexts.append(max(1, end - begin))
        end = stop
        if stop >= len(ids):
            return pieces, contexts


def tokenize_documents(documents: list[str], tokenizer, max_length: int, batch: int = 256, stride: int | None = None):
    """(windows, scored bytes, context per window): every document tokenized with EOS and cut to max_length windows
    (int32 arrays: a ninth of a Python list's memory); a window's first `context` tokens are read, not scored."""
    eos = tokenizer.eos_token_id
    pieces, text_bytes, contexts = [], 0, []
    for start in tqdm(range(0, len(documents), batch), desc="tokenizing", unit="batch", leave=False):
        texts = documents[start : start + batch]
        for text, ids in zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"]):
            text_bytes += len(text.encode("utf-8")) - (token_bytes(tokenizer, ids[0]) if ids else 0)
            ids = np.asarray(ids + [eos], dtype=np.int32)
            cut, context = sliding_windows(ids, max_length, stride) if stride else (windows(ids, max_length), None)
            pieces.extend(cut)
            contexts.extend(context or [1] * len(cut))
    return pieces, text_bytes, contexts


def packed_batches(
    pieces: list, max_length: int, batch_size: int, collator: PackedCollator, contexts: list[int] | None = None
):
    """(batch, real tokens) of packed rows (training's packer, `data.packing.pack`), fullest rows first so a batch
    pads (at its end) as little as possible. With `contexts`, a window's first context[i] tokens get no label (the
    collator masks only the first)."""
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    bounds, order = pack(lengths, max_length, packing=True)
    fullest = np.argsort(-np.add.reduceat(lengths[order], bounds[:-1]), kind="stable") if len(order) else bounds[:0]
    packs = [order[bounds[r] : bounds[r + 1]].tolist() for r in fullest.tolist()]
    for start in range(0, len(packs), batch_size):
        rows = []
        for members in packs[start : start + batch_size]:
            row = {
                "input_ids": np.concatenate([pieces[i] for i in members]),
                "seq_lengths": [len(pieces[i]) for i in members],
            }
            if contexts is not None and any(contexts[i] > 1 for i in members):
                labels = [np.where(np.arange(len(pieces[i])) < contexts[i], IGNORE_INDEX, pieces[i]) for i in members]
                row["labels"] = np.concatenate(labels)
            rows.append(row)
        yield collator(rows), sum(len(row["input_ids"]) for row in rows)


def causal_lm_parts(model):
    """(decoder body, output embedding) of a causal LM, a peft wrapper's included."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    if getattr(model.config, "final_logit_softcapping", None):
        raise UsageError("perplexity: models that soft-cap their logits are not supported")
    return model.base_model, model.get_output_embeddings()


@torch.inference_mode()
def score_batch(body, head, batch: dict, chunk_size: int, router_off: bool):
    """(summed NLL [fp64], correct predictions, scored tokens) of one packed batch."""
    device = head.weight.device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
    if router_off:
        inputs["output_router_logits"] = False
    hidden = body(**inputs, use_cache=False).last_hidden_state  # [batch, seq, hidden]
    target = batch["labels"][:, 1:]  # next-token targets on the host, [batch, seq - 1]
    keep = (target != IGNORE_INDEX).reshape(-1).nonzero().squeeze(1)  # found on the host: no device sync
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, keep.to(device))  # [scored, hidden]
    target = target.reshape(-1)[keep].to(device)  # [scored]
    nll, correct = score_tokens(hidden, head.weight, head.bias, target, chunk_size)
    return nll, correct, target.numel()


def evaluate_perplexity(
    model,
    tokenizer,
    documents: list[str],
    max_length: int,
    batch_size: int = 8,
    name: str = "perplexity",
    stride: int | None = None,
) -> PerplexityResult:
    if max_length < 2:
        raise UsageError(f"--max_length {max_length}: at least 2 tokens are needed to score one")
    if stride is not None:
        stride = min(stride, max_length - 1)  # a longer move would skip tokens
    pieces, text_bytes, contexts = tokenize_documents(documents, tokenizer, max_length, stride=stride)
    body, head = causal_lm_parts(model)
    config = model.config
    flash = "flash" in (getattr(config, "_attn_implementation", None) or "")
    collator = PackedCollator(tokenizer.pad_token_id, return_flash_kwargs=flash)
    chunk_size = CPU_CHUNK if head.weight.device.type == "cpu" else getattr(config, "loss_chunk_size", 0) or 1024
    router_off = bool(getattr(config, "num_experts", 0))
    input_tokens = sum(len(p) for p in pieces)
    nll = torch.zeros((), dtype=torch.float64, device=head.weight.device)
    correct = torch.zeros((), dtype=torch.long, device=head.weight.device)
    scored = rows = 0
    start = time.perf_counter()
    with tqdm(total=input_tokens, desc=name, unit="tok", unit_scale=True) as progress:
        for batch, real_tokens in packed_batches(pieces, max_length, batch_size, collator, contexts):
            batch_nll, batch_correct, batch_scored = score_batch(body, head, batch, chunk_size, router_off)
            nll += batch_nll  # stays on the device: no host sync per batch
            correct += batch_correct
            scored += batch_scored
            rows += batch["input_ids"].shape[0]
            progress.update(real_tokens)
        nll, correct = float(nll), int(correct)
    seconds = time.perf_counter() - start
    result = PerplexityResult(
        documents=len(documents),
        tokens=scored,
        nll=nll,
        correct=correct,
        bytes=text_bytes,
        input_tokens=input_tokens,
        seconds=seconds,
        windows=len(pieces),
        rows=rows,
    )
    logger.info(perplexity_line(name, result.to_dict()))
    return result


def perplexity_line(name: str, figures: dict) -> str:
    """One results.json perplexity entry as the log and eval.py's summary print it."""
    return (
        f"{name}: perplexity {figures['perplexity']:.4f}, {figures['bits_per_byte']:.4f} bits/byte, token accuracy "
        f"{figures['token_accuracy']:.4f}, {figures['tokens']:,} tokens, {figures['tokens_per_second']:,.0f} tokens/s"
    )
