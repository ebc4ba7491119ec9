"""Continuous batching: one thread per served model runs batched decode steps; requests join between steps (their
prompts prefilled together while they fit a token budget, a longer prompt in chunks, one chunk per step) and leave
as soon as they finish or their client goes away."""

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..chat.generation import RowSampler, SamplingParams, pick_tokens, stop_token_ids
from .batch import DecodeBatch, batchable
from .logprobs import TokenLogprob, token_logprobs
from .text import TextAssembler
from .waiting import EngineClosed, WaitingQueue

logger = logging.getLogger(__name__)

MAX_BATCH_SIZE = 32  # default rows decoded together (each row's KV cache grows with its context)
LOGITS_CHUNK = 512  # prompt positions per forward when every position's logits are kept (prompt log-probabilities)


@dataclass
class TextDelta:
    text: str
    logprobs: list[TokenLogprob] | None = None  # the tokens sampled since the last delta, when asked for


@dataclass
class PromptLogprobs:
    entries: list[TokenLogprob | None]  # one per prompt token; the first has none


@dataclass
class Finished:
    reason: str  # "stop" (EOS or a stop string), "length", or "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    message: str
    status: int = 500


@dataclass
class GenerationRequest:
    """One completion. The engine thread calls `deliver` with TextDelta events (after a PromptLogprobs event when
    asked for), then one Finished or Failed."""

    prompt_ids: list[int]
    params: SamplingParams
    deliver: Callable[[TextDelta | PromptLogprobs | Finished | Failed], None]
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: each sampled token's log-probability and the k most likely
    prompt_logprobs: bool = False  # echo: the log-probability of every prompt token (with `logprobs` top ones)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Sequence:
    """A request being generated: its tokens, its sampler and its text so far."""

    def __init__(self, request: GenerationRequest, tokenizer, device):
        self.request = request
        self.tokens = list(request.prompt_ids)  # prompt + generated; the last one is not in the cache yet
        self.generated = 0
        self.sampler = RowSampler(request.params, device)  # seeds its generator: a seed torch refuses fails here
        self.text = TextAssembler(tokenizer, request.stop)


@dataclass
class _Prefill:
    """A prompt prefilled in chunks: longer than a turn's budget, or with prompt log-probabilities."""

    sequence: _Sequence
    cache: object
    done: int = 0  # prompt tokens in the cache
    logprobs: list = field(default_factory=lambda: [None])


class BatchEngine:
    """Serves one model. `submit` may be called from any thread; generation runs on the engine's own thread."""

    def __init__(
        self,
        model,
        tokenizer,
        max_batch_size: int = MAX_BATCH_SIZE,
        name: str = "model",
        max_prefill_tokens: int = 4096,
        max_waiting: int = 256,
    ):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_batch_size = max_batch_size if batchable(model.config) else 1
        if self.max_batch_size < max_batch_size:
            logger.info("%s has sliding-window layers: its requests are generated one at a time", name)
        self.max_prefill_tokens = max_prefill_tokens
        self.context_length = getattr(model.config, "max_position_embeddings", 2048)
        self.eos_ids = set(stop_token_ids(tokenizer, model))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.batch = DecodeBatch(model)
        self.running: list[_Sequence] = []
        self.prefilling: _Prefill | None = None
        self.waiting = WaitingQueue(max_waiting)
        self.tokens_generated = 0  # every token sampled, for all requests (tests, benchmarks and /metrics read it)
        self.prompt_tokens = 0  # every prompt token prefilled
        self.decode_steps = 0
        self._finish_times: deque[float] = deque(maxlen=64)  # for Retry-After
        self._logged = (time.monotonic(), 0, 0)  # when throughput was last logged, tokens and steps then
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"moai-engine-{name}", daemon=True)
        self._thread.start()

    def stats(self) -> dict:
        """Load now, and work done (tokens_generated / decode_steps is the mean batch size)."""
        return {
            "running": len(self.running) + (self.prefilling is not None),
            "waiting": self.waiting.qsize(),
            "tokens_generated": self.tokens_generated,
            "prompt_tokens": self.prompt_tokens,
            "decode_steps": self.decode_steps,
        }

    def submit_all(self, requests: list[GenerationRequest]) -> None:
        """Queue requests, all or none: QueueFull when the waiting line has no room, EngineClosed when shutting
        down."""
        if self._closing.is_set():
            raise EngineClosed("the server is shutting down")
        self.waiting.put_all(requests)

    def retry_after(self) -> int:
        """Seconds until the waiting line has likely moved on (from the recent rate of finished requests)."""
        times = self._finish_times
        if len(times) < 2 or times[-1] <= times[0]:
            return 1
        rate = (len(times) - 1) / (times[-1] - times[0])
        return max(1, min(60, math.ceil(self.waiting.qsize() / rate)))

    def close(self, timeout: float = 10.0) -> None:
        self._closing.set()
        self.waiting.wake()
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
        self._fail_running("the server is shutting down", 503)
        for request in self.waiting.drain():
            request.deliver(Failed("the server is shutting down", 503))

    def _admit(self) -> None:
        """Prefill waiting requests while their tokens fit the turn's budget (left-padded together, counted as
        rows x longest prompt), or the next chunk of a long prompt; waits for work when nothing runs."""
        if self.prefilling is not None:
            self._prefill_chunk()
            return
        new: list[_Sequence] = []
        width = 0
        while len(self.running) + len(new) < self.max_batch_size and not self._closing.is_set():
            request = self.waiting.peek(timeout=0.5 if not self.running and not new else 0)
            if request is None:
                break
            length = len(request.prompt_ids)
            if request.cancelled.is_set():
                self.waiting.pop()
                request.deliver(Finished("cancelled", length, 0))
                continue
            alone = request.prompt_logprobs or request.params.max_new_tokens == 0 or length > self.max_prefill_tokens
            if new and (alone or (len(new) + 1) * max(width, length) > self.max_prefill_tokens):
                break  # next turn
            self.waiting.pop()
            try:
                sequence = _Sequence(request, self.tokenizer, self.model.device)
            except Exception as err:  # this request's own values (its seed): it fails alone
                logger.warning("%s: request refused: %s: %s", self.name, type(err).__name__, err)
                request.deliver(Failed(f"invalid request: {type(err).__name__}: {err}", 400))
                continue
            if alone:
                self.prefilling = _Prefill(sequence, self.batch.new_cache())
                self._prefill_chunk()
                return
            new.append(sequence)
            width = max(width, length)
        if new:
            self._prefill_together(new)

    def _prefill_together(self, sequences: list[_Sequence]) -> None:
        try:
            logits, cache, mask = self.batch.prefill([s.tokens for s in sequences], self.pad_id)
        except Exception as err:
            logger.exception("%s: prefill failed", self.name)
            for s in sequences:
                s.request.deliver(Failed(f"generation failed: {type(err).__name__}: {err}"))
            return
        self.prompt_tokens += sum(len(s.tokens) for s in sequences)
        self.batch.join(cache, mask)
        self.running.extend(sequences)
        self._advance(sequences, logits)

    def _prefill_chunk(self) -> None:
        """One chunk of the prompt being prefilled alone; when it is whole, the sequence joins the batch."""
        p, s = self.prefilling, self.prefilling.sequence
        request, prompt = s.request, s.tokens
        if request.cancelled.is_set():
            self.prefilling = None
            request.deliver(Finished("cancelled", len(prompt), 0))
            return
        size = min(self.max_prefill_tokens, LOGITS_CHUNK) if request.prompt_logprobs else self.max_prefill_tokens
        start, chunk = p.done, prompt[p.done : p.done + size]
        try:
            logits = self.batch.extend(p.cache, chunk, start, all_logits=request.prompt_logprobs)
        except Exception as err:
            logger.exception("%s: prefill failed", self.name)
            self.prefilling = None
            request.deliver(Failed(f"generation failed: {type(err).__name__}: {err}"))
            return
        p.done += len(chunk)
        if request.prompt_logprobs:
            targets = prompt[start + 1 : p.done + 1]  # row j of logits predicts prompt token start + j + 1
            p.logprobs.extend(token_logprobs(logits[: len(targets)], targets, request.logprobs or 0))
        if p.done < len(prompt):
            return
        self.prefilling = None
        self.prompt_tokens += len(prompt)
        if request.prompt_logprobs:
            request.deliver(PromptLogprobs(p.logprobs))
        if request.params.max_new_tokens == 0:
            self._finish_times.append(time.monotonic())
            request.deliver(Finished("length", len(prompt), 0))
            return
        self.batch.join(p.cache, torch.ones(1, len(prompt), dtype=torch.long, device=self.model.device))
        self.running.append(s)
        self._advance([s], logits[-1:])

    def _decode(self) -> None:
        cancelled = [s for s in self.running if s.request.cancelled.is_set()]
        self._retire({id(s): Finished("cancelled", len(s.request.prompt_ids), s.generated) for s in cancelled})
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

    def _pick(self, sequences: list[_Sequence], logits: torch.Tensor) -> list[int | Exception]:
        """Each row's next token; a row whose sampling fails gets its exception, and the other rows go on."""
        try:
            return pick_tokens([s.sampler for s in sequences], [s.tokens for s in sequences], logits)
        except Exception:
            picked = []
            for row, s in enumerate(sequences):
                try:
                    picked.append(pick_tokens([s.sampler], [s.tokens], logits[row : row + 1])[0])
                except Exception as err:
                    logger.exception("%s: sampling failed for one request", self.name)
                    picked.append(err)
            return picked

    def _logprobs(self, sequences: list[_Sequence], logits: torch.Tensor, tokens: list) -> dict[int, TokenLogprob]:
        rows = [r for r, s in enumerate(sequences) if s.request.logprobs is not None and isinstance(tokens[r], int)]
        if not rows:
            return {}
        k = max(sequences[r].request.logprobs for r in rows)
        entries = token_logprobs(logits[rows], [tokens[r] for r in rows], k)
        for r, entry in zip(rows, entries):
            entry.top = entry.top[: sequences[r].request.logprobs]
        return dict(zip(rows, entries))

    def _advance(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        """Pick each row's next token (logits [rows, vocab]), stream its text, retire the finished rows."""
        tokens = self._pick(sequences, logits)
        logprobs = self._logprobs(sequences, logits, tokens)
        finished = {}
        for row, (s, token) in enumerate(zip(sequences, tokens)):
            request = s.request
            if isinstance(token, Exception):
                finished[id(s)] = Failed(f"generation failed: {type(token).__name__}: {token}")
                continue
            s.generated += 1
            self.tokens_generated += 1
            entries = [logprobs[row]] if row in logprobs else None
            reason, hit_stop, text = None, False, ""
            if token in self.eos_ids and not request.ignore_eos:
                reason = "stop"
            else:
                s.tokens.append(token)
                text, hit_stop = s.text.add(token)
                if hit_stop:
                    reason = "stop"
                elif s.generated >= request.params.max_new_tokens or len(s.tokens) >= self.context_length:
                    reason = "length"
            if reason is not None and not hit_stop:
                text += s.text.flush()  # text held back for a stop string that never came
            if text or entries:
                request.deliver(TextDelta(text, entries))
            if reason is not None:
                finished[id(s)] = Finished(reason, len(request.prompt_ids), s.generated)
        self._retire(finished)

    def _retire(self, finished: dict[int, Finished | Failed]) -> None:
        if not finished:
            return
        keep = [row for row, s in enumerate(self.running) if id(s) not in finished]
        for s in self.running:
            if id(s) in finished:
                self._finish_times.append(time.monotonic())
                s.request.deliver(finished[id(s)])
        self.running = [self.running[row] for row in keep]
        self.batch.keep(keep)

    def _fail_running(self, message: str, status: int = 500) -> None:
        for s in self.running:
            s.request.deliver(Failed(message, status))
        if self.prefilling is not None:
            self.prefilling.sequence.request.deliver(Failed(message, status))
            self.prefilling = None
        self.running = []
        self.batch.keep([])
