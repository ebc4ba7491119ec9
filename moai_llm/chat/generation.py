"""Generation: sampling settings, streamed answers that Ctrl-C can stop, batched one-shot answers, and the per-row
samplers of the server's decode loop (transformers' logits processors, as `generate` applies them)."""

import threading
import time
from dataclasses import dataclass

import torch
from transformers import (
    CompileConfig,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..loading import CHAT_END_TOKEN

# Below this temperature sampling is greedy: dividing logits by 1e-300 overflows to inf and the softmax is NaN, and
# long before that the distribution is one-hot in float32 anyway (vLLM's threshold).
GREEDY_BELOW = 1e-5


@dataclass
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    max_new_tokens: int = 256
    seed: int | None = None

    def generate_kwargs(self) -> dict:
        kwargs = {"do_sample": not self.greedy, "repetition_penalty": self.repetition_penalty}
        if not self.greedy:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return {**kwargs, "max_new_tokens": self.max_new_tokens}

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def logits_processors(self) -> LogitsProcessorList:
        """What `generate` applies for these params, in its order: for decode loops that pick tokens themselves."""
        processors = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if not self.greedy:
            if self.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                processors.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                processors.append(TopPLogitsWarper(self.top_p))
        return processors

    def set(self, key: str, value: str) -> None:
        if key not in self.__dataclass_fields__:
            raise ValueError(f"unknown parameter {key!r} (known: {', '.join(self.__dataclass_fields__)})")
        kind = {"top_k": int, "max_new_tokens": int, "seed": int}.get(key, float)
        setattr(self, key, None if value.lower() == "none" else kind(value))


class RowSampler:
    """One request's sampling in the server's decode loop: its params and seeded generator, so an answer does not
    depend on what else is in the batch."""

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu"):
        self.params = params
        self.processors = params.logits_processors()
        # this request's generator, seeded by `seed` (else at random); made here, so a seed torch refuses fails
        # when the request is admitted, alone
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)
        # Rows with equal keys are processed in one call: temperature, top-k and top-p do not read the tokens so
        # far. A repetition penalty does, so such a row is processed alone.
        self.key = (
            None
            if params.repetition_penalty != 1.0
            else (params.greedy, params.temperature, params.top_p, params.top_k)
        )

    def sample(self, probs: torch.Tensor) -> int:
        """One draw from probs [vocab] with this request's generator."""
        # Inverse-CDF draw: the distribution torch.multinomial samples, cheaper for one draw (benchmarks/README.md).
        # Searching for the first cdf value above u (u < total) never lands on a zero-probability token.
        # float32 (MPS has no float64): a zero-probability token adds exactly 0, so its step of the cdf stays flat.
        cdf = probs.float().cumsum(0)
        u = torch.rand((1,), generator=self.generator, device=probs.device) * cdf[-1]
        return min(int(torch.searchsorted(cdf, u, right=True)), probs.shape[0] - 1)


def pick_tokens(samplers: list[RowSampler], histories: list[list[int]], logits: torch.Tensor) -> list[int]:
    """Next token of every row, from logits [rows, vocab] and each row's tokens so far (prompt included)."""
    groups: dict = {}
    for row, sampler in enumerate(samplers):
        groups.setdefault(sampler.key if sampler.key is not None else ("alone", row), []).append(row)
    tokens = [0] * len(samplers)
    for rows in groups.values():
        first = samplers[rows[0]]
        scores = logits[rows]  # [group rows, vocab]
        if first.processors:
            seen = torch.tensor(
                [histories[rows[0]]] if first.key is None else [[]] * len(rows), dtype=torch.long, device=logits.device
            )
            for processor in first.processors:  # LogitsProcessorList.__call__ would inspect each signature per step
                scores = processor(seen, scores)
        if first.params.greedy:
            picked = scores.argmax(-1).tolist()
        else:
            probs = torch.softmax(scores, dim=-1)
            picked = [samplers[row].sample(probs[i]) for i, row in enumerate(rows)]
        for row, token in zip(rows, picked):
            tokens[row] = token
    return tokens


DECODINGS = ("dynamic", "static", "compiled")


def decoding_kwargs(decoding: str, device: torch.device) -> dict:
    """`generate`'s KV cache: "dynamic" (transformers' default), "static" (a StaticCache; on CUDA transformers
    compiles the decode step itself) or "compiled" (a StaticCache and torch.compile on every device, CPU included;
    opt-in, as the first answer of each cache size waits for the compilation: benchmarks/README.md, Decoding)."""
    if decoding not in DECODINGS:
        raise ValueError(f"decoding {decoding!r}: one of {', '.join(DECODINGS)}")
    if decoding == "dynamic":
        return {}
    kwargs = {"cache_implementation": "static"}
    if decoding == "compiled":
        # CUDA graphs ("reduce-overhead", transformers' default) exist on CUDA only
        config = CompileConfig(
            fullgraph=False, dynamic=False, mode="reduce-overhead" if device.type == "cuda" else "default"
        )
        config._compile_all_devices = True  # transformers compiles on accelerators only unless told
        kwargs["compile_config"] = config
    return kwargs


class StopFlag(StoppingCriteria):
    """Set by the Ctrl-C handler: the generation thread stops at the next token."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs):
        return self.event.is_set()


def stop_token_ids(tokenizer, model) -> list[int]:
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(CHAT_END_TOKEN)}
    eos = model.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos])
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def _generate_kwargs(model, tokenizer, params: SamplingParams, decoding: str) -> dict:
    """What both paths pass `generate` besides the prompts; a seed seeds torch's global generator here."""
    if params.seed is not None:
        torch.manual_seed(params.seed)
    return {
        "eos_token_id": stop_token_ids(tokenizer, model),
        "pad_token_id": tokenizer.pad_token_id,
        **params.generate_kwargs(),
        **decoding_kwargs(decoding, model.device),
    }


def stream_answer(
    model,
    tokenizer,
    prompt_ids: torch.Tensor,
    params: SamplingParams,
    stop: StopFlag,
    on_text,
    decoding: str = "dynamic",
):
    """Generate in a thread, call on_text for each decoded piece; returns (text, new tokens, seconds)."""
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop.event.clear()
    kwargs = dict(
        input_ids=prompt_ids.to(model.device),
        attention_mask=torch.ones_like(prompt_ids).to(model.device),
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([stop]),
        **_generate_kwargs(model, tokenizer, params, decoding),
    )
    result = {}  # generate runs without gradients (its own torch.no_grad)
    start = time.perf_counter()
    thread = threading.Thread(target=lambda: result.update(ids=model.generate(**kwargs)), daemon=True)
    thread.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        on_text(piece)
    thread.join()
    seconds = time.perf_counter() - start
    new_tokens = int(result["ids"].shape[1] - prompt_ids.shape[1]) if "ids" in result else 0
    return "".join(pieces), new_tokens, seconds


def batch_answers(
    model, tokenizer, prompts: list[torch.Tensor], params: SamplingParams, batch_size: int, decoding: str = "dynamic"
):
    """Answers for many prompts, `batch_size` at a time with left padding; texts in input order."""
    tokenizer.padding_side = "left"
    kwargs = _generate_kwargs(model, tokenizer, params, decoding)
    answers = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [p.tolist() for p in chunk]}, return_tensors="pt")
        out = model.generate(**{k: v.to(model.device) for k, v in batch.items()}, **kwargs)
        new = out[:, batch["input_ids"].shape[1] :]
        answers.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return answers
