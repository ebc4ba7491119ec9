"""Next tokens for a batch of rows, each with its own sampling params and seeded generator, picked as `generate`
picks them (transformers' logits processors), so an answer does not depend on what else is in the batch."""

import torch

from ..chat.generation import SamplingParams


class RowSampler:
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
