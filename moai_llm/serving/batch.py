"""The running sequences' KV cache as one left-padded batch that sequences join and leave between decode steps.

Hand-written: `generate` cannot add or drop rows mid-flight, and transformers' continuous batching fails on
MoaiForCausalLM (ARCHITECTURE.md, Serving). The cache, the 2-D mask and the left-padding conventions are
transformers'."""

import torch
from transformers import DynamicCache


def batchable(config) -> bool:
    """Left-padded rows of different ages can share a cache only when every layer attends to the whole past."""
    return all(kind == "full_attention" for kind in getattr(config, "layer_types", None) or ["full_attention"])


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if width == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = width
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class DecodeBatch:
    """KV cache ([rows, kv_heads, length, head_dim] per layer) and attention mask ([rows, length]) of the running
    sequences; shorter rows are padded on the left, as `generate` pads a batch."""

    def __init__(self, model):
        self.model = model
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, length], 1 = real token

    def _forward(self, ids, mask, positions, cache: DynamicCache, logits_to_keep: int = 1) -> torch.Tensor:
        """One forward that appends its keys and values to `cache`; float logits [rows, kept positions, vocab]. The
        engine's thread runs it under `torch.inference_mode`."""
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return out.logits.float()

    def prefill(self, prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
        """One forward over the prompts, left-padded: (last-position logits [rows, vocab], cache, mask)."""
        device = self.model.device
        length = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (length - len(p)) + p for p in prompts], device=device)  # [rows, length]
        mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # generate's convention for left padding
        cache = self.new_cache()
        return self._forward(ids, mask, positions, cache)[:, -1], cache, mask

    def extend(self, cache: DynamicCache, tokens: list[int], start: int, all_logits: bool) -> torch.Tensor:
        """Feed the next chunk of one prompt whose first `start` tokens are in `cache`: logits [chunk, vocab] (every
        position, for prompt log-probabilities) or [1, vocab] (the last)."""
        device = self.model.device
        end = start + len(tokens)
        mask = torch.ones(1, end, dtype=torch.long, device=device)
        positions = torch.arange(start, end, device=device)[None]
        return self._forward(torch.tensor([tokens], device=device), mask, positions, cache, 0 if all_logits else 1)[0]

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append prefilled rows; the shorter side is padded on the left to the common length."""
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        old, new = self.mask.shape[1], mask.shape[1]
        length = max(old, new)
        layers = [
            (
                torch.cat([_pad_left(k0, length - old, 2), _pad_left(k1, length - new, 2)]),
                torch.cat([_pad_left(v0, length - old, 2), _pad_left(v1, length - new, 2)]),
            )
            for (k0, v0, _), (k1, v1, _) in zip(self.cache, cache)
        ]
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat([_pad_left(self.mask, length - old, 1), _pad_left(mask, length - new, 1)])

    def step(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Feed one token per row at its own position; logits of the next token [rows, vocab]."""
        device = self.model.device
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        ids = torch.tensor(tokens, device=device)[:, None]
        return self._forward(ids, self.mask, torch.tensor(positions, device=device)[:, None], self.cache)[:, -1]

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows, and drop the leading columns that are padding in all of them."""
        if not rows:
            self.cache = self.mask = None
            return
        if len(rows) < self.mask.shape[0]:
            index = torch.tensor(rows, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask[index]
        unused = int((self.mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-padding columns
        if unused:
            self.cache = DynamicCache(ddp_cache_data=[(k[:, :, unused:], v[:, :, unused:]) for k, v, _ in self.cache])
            self.mask = self.mask[:, unused:]
