"""Batches for the model: packed rows (position_ids restart per document) or padded rows (--packing false)."""

from dataclasses import dataclass

import torch

from ..batch_format import IGNORE_INDEX, flash_varlen_kwargs


def right_padded(rows: list[dict], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and labels ([rows, longest]) of rows padded at the end: labels are the row's `labels` (SFT) or its
    tokens, -100 on the padding."""
    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
        input_ids[i, : len(ids)] = ids
        labels[i, : len(ids)] = torch.as_tensor(row["labels"]) if "labels" in row else ids
    return input_ids, labels


@dataclass
class PackedCollator:
    """Rows are `input_ids` (documents concatenated) with `seq_lengths`; no padding inside a row.

    labels: the row's `labels` (SFT) or the tokens themselves, -100 on each document's first token (it would be
    predicted from the previous document); rows shorter than the longest in the batch are padded at the end as one
    more "document" whose labels are -100. No attention_mask: the model isolates documents from position_ids.
    """

    pad_token_id: int
    return_flash_kwargs: bool = False

    def __call__(self, rows: list[dict]) -> dict:
        input_ids, labels = right_padded(rows, self.pad_token_id)
        width = input_ids.shape[1]
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            start = 0
            for length in row["seq_lengths"]:
                position_ids[i, start : start + length] = torch.arange(length)
                labels[i, start] = IGNORE_INDEX
                start += length
            position_ids[i, start:] = torch.arange(width - start)
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        if self.return_flash_kwargs:
            batch.update(flash_varlen_kwargs(position_ids))
        return batch


@dataclass
class PaddingCollator:
    """Rows padded to the longest in the batch (right padding, attention_mask, labels -100 on pads)."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict:
        input_ids, labels = right_padded(rows, self.pad_token_id)
        lengths = torch.tensor([len(row["input_ids"]) for row in rows])
        mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
