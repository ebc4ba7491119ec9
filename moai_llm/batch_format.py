"""What a training batch means to the model, shared by the data layer (which builds batches) and the model (which
reads them): the label that is not scored, and flash-attention's varlen boundaries of packed rows."""

import torch

IGNORE_INDEX = -100  # labels at this value are not scored (transformers' and torch's convention)


def flash_varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """cu_seq_lens/max_length for flash varlen over the flattened batch ([batch, seq] -> [batch*seq]), cut where
    positions restart and, unlike transformers' `prepare_fa_kwargs_from_position_ids`, at every row start."""
    starts = position_ids == 0
    starts[:, 0] = True
    starts = starts.reshape(-1).nonzero().view(-1).to(torch.int32)
    total = torch.tensor([position_ids.numel()], dtype=torch.int32, device=position_ids.device)
    cu_seq_lens = torch.cat([starts, total])
    max_length = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    return {
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max_length,
        "max_length_k": max_length,
    }
