"""Continuous batching: one thread per served model runs batched decode steps; requests join between steps (their
prompts prefilled together) and leave as soon as they finish or their client goes away."""

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..chat.generation import SamplingParams, stop_token_ids
from .batch import DecodeBatch, batchable
from .sampling import RowSampler, pick_tokens
from .text import TextAssembler

logger = logging.getLogger(__name__)


@dataclass
class TextDelta:
    text: str


@dataclass
class Finished:
    reason: str  # "stop" (EOS or a stop string), "length", or "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    message: str


@dataclass
class GenerationRequest:
    """One completion. The engine thread calls `deliver` with TextDelta events, then one Finished or Failed."""

    prompt_ids: list[int]
    params: SamplingParams
    deliver: Callable[[TextDelta | Finished | Failed], None]
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Sequence:
    """A request being generated: its tokens, its sampler and its text so far."""

    def __init__(self, request: GenerationRequest, tokenizer):
        self.request = request
        self.tokens = list(request.prompt_ids)  # prompt + generated; the last one is not in the cache yet
        self.generated = 0
        self.sampler = RowSampler(request.params)
        self.text = TextAssembler(tokenizer, request.stop)


class BatchEngine:
    """Serves one model. `submit` may be called from any thread; generation runs on the engine's own thread."""

    def __init__(self, model, tokenizer, max_batch_size: int = 16, name: str = "model"):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_batch_size = max_batch_size if batchable(model.config) else 1
        if self.max_batch_size < max_batch_size:
            logger.info("%s has sliding-window layers: its requests are generated one at a time", name)
        self.context_length = getattr(model.config, "max_position_embeddings", 2048)
        self.eos_ids = set(stop_token_ids(tokenizer, model))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.batch = DecodeBatch(model)
        self.running: list[_Sequence] = []
        self.waiting: queue.Queue[GenerationRequest | None] = queue.Queue()
        self.tokens_generated = 0  # every token sampled, for all requests (tests and benchmarks read it)
        self.decode_steps = 0
        self._logged = (time.monotonic(), 0, 0)  # when throughput was last logged, tokens and steps then
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"moai-engine-{name}", daemon=True)
        self._thread.start()

    def stats(self) -> dict:
        """For /health: load now, and work done (tokens_generated / decode_steps is the mean batch size)."""
        return {
            "running": len(self.running),
            "waiting": self.waiting.qsize(),
            "max_batch_size": self.max_batch_size,
            "tokens_generated": self.tokens_generated,
            "decode_steps": self.decode_steps,
        }

    def submit(self, request: GenerationRequest) -> None:
        if self._closing.is_set():
            request.deliver(Failed("the server is shutting down"))
            return
        self.waiting.put(request)

    def close(self, timeout: float = 10.0) -> None:
        self._closing.set()
        self.waiting.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._closing.is_set():
                try:
                    self._admit()
                    self._decode()
                except Exception as err:  # a failed forward fails the requests in it, never the server
                    logger.exception("%s: generation failed", self.name)
                    self._fail_running(f"generation failed: {type(err).__name__}: {err}")
        self._fail_running("the server is shutting down")
        while not self.waiting.empty():
            request = self.waiting.get_nowait()
            if request is not None:
                request.deliver(Failed("the server is shutting down"))

    def _admit(self) -> None:
        """Prefill waiting requests together and add them to the batch (waits for work when nothing runs)."""
        new: list[GenerationRequest] = []
        while len(self.running) + len(new) < self.max_batch_size:
            idle = not self.running and not new
            try:
                request = self.waiting.get(timeout=0.5) if idle else self.waiting.get_nowait()
            except queue.Empty:
                break
            if request is None:
                break
            if request.cancelled.is_set():
                request.deliver(Finished("cancelled", len(request.prompt_ids), 0))
                continue
            new.append(request)
        if not new:
            return
        sequences = [_Sequence(request, self.tokenizer) for request in new]
        try:
            logits, cache, mask = self.batch.prefill([s.tokens for s in sequences], self.pad_id)
        except Exception as err:
            logger.exception("%s: prefill failed", self.name)
            for s in sequences:
                s.request.deliver(Failed(f"generation failed: {type(err).__name__}: {err}"))
            return
        self.batch.join(cache, mask)
        self.running.extend(sequences)
        self._advance(sequences, logits)

    def _decode(self) -> None:
        self._retire(
            {
                id(s): Finished("cancelled", len(s.request.prompt_ids), s.generated)
                for s in self.running
                if s.request.cancelled.is_set()
            }
        )
        if not self.running:
            return
        logits = self.batch.step([s.tokens[-1] for s in self.running], [len(s.tokens) - 1 for s in self.running])
        self.decode_steps += 1
        self._advance(self.running, logits)
        self._log_throughput()

    def _log_throughput(self, every: float = 60.0) -> None:
        then, tokens, steps = self._logged
        now = time.monotonic()
        if now - then >= every:
            logger.info(
                "%s: %.1f tokens/s over the last %.0fs, %.1f sequences per decode step, %d waiting",
                self.name,
                (self.tokens_generated - tokens) / (now - then),
                now - then,
                (self.tokens_generated - tokens) / max(self.decode_steps - steps, 1),
                self.waiting.qsize(),
            )
            self._logged = (now, self.tokens_generated, self.decode_steps)

    def _advance(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        """Pick each row's next token (logits [rows, vocab]), stream its text, retire the finished rows."""
        tokens = pick_tokens([s.sampler for s in sequences], [s.tokens for s in sequences], logits)
        finished = {}
        for s, token in zip(sequences, tokens):
            s.generated += 1
            self.tokens_generated += 1
            request = s.request
            reason, hit_stop = None, False
            if token in self.eos_ids and not request.ignore_eos:
                reason = "stop"
            else:
                s.tokens.append(token)
                text, hit_stop = s.text.add(token)
                if text:
                    request.deliver(TextDelta(text))
                if hit_stop:
                    reason = "stop"
                elif s.generated >= request.params.max_new_tokens or len(s.tokens) >= self.context_length:
                    reason = "length"
            if reason is not None:
                tail = "" if hit_stop else s.text.flush()  # text held back for a stop string that never came
                if tail:
                    request.deliver(TextDelta(tail))
                finished[id(s)] = Finished(reason, len(request.prompt_ids), s.generated)
        self._retire(finished)

    def _retire(self, finished: dict[int, Finished]) -> None:
        if not finished:
            return
        keep = [row for row, s in enumerate(self.running) if id(s) not in finished]
        for s in self.running:
            if id(s) in finished:
                s.request.deliver(finished[id(s)])
        self.running = [self.running[row] for row in keep]
        self.batch.keep(keep)

    def _fail_running(self, message: str) -> None:
        for s in self.running:
            s.request.deliver(Failed(message))
        self.running = []
        self.batch.clear()
