"""Measured tensor memory, to check `memory.py`'s estimates against: the peak of live tensor storages on any device.

Why hand-written: the CPU has no allocator statistics (RSS also counts Python, libraries and freed pages), and
torch's own `MemTracker` (torch.distributed._tools) is private. `LiveTensorBytes` sees every tensor an op creates
(a dispatch mode: backward and the optimizer too) and counts each storage once while it is alive.
"""

import contextlib

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .memory import ATTENTION


def process_peak_bytes(cuda: bool) -> tuple[int, str]:
    """(bytes, what was measured) of this process so far: the CUDA allocator's peak, or the peak RSS on CPU."""
    if cuda:
        return torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS of the process"


class LiveTensorBytes(TorchDispatchMode):
    """Inside `with LiveTensorBytes() as meter:`, `meter.peak` is the most bytes of tensor storage alive at once.

    Tensors that exist before entering are not counted. Between peaks `current` may still count freed storages;
    they are dropped whenever it passes the peak.
    """

    def __init__(self):
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}  # storage id -> (weak reference, bytes)
        self.current = 0
        self.peak = 0

    def _observe(self, tensors) -> None:
        for tensor in tree_leaves(tensors):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = storage._cdata
                known = self._live.get(key)
                if known is not None and not known[0].expired():
                    continue
                if known is not None:  # a freed storage's address, reused
                    self.current -= known[1]
                self._live[key] = (StorageWeakRef(storage), storage.nbytes())
                self.current += storage.nbytes()
        if self.current > self.peak:  # maybe a new peak: drop the storages freed since, then count exactly
            for key in [key for key, (ref, _) in self._live.items() if ref.expired()]:
                self.current -= self._live.pop(key)[1]
            self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._observe(out)
        return out


def measure_step_peak(config: dict, setup, steps: int = 2, accumulation: int = 2, seed: int = 0) -> int:
    """Peak tensor bytes of `steps` optimizer steps (each `accumulation` micro-batches of packed rows, two documents
    per row) of a new MoaiForCausalLM from `config` under `setup` (a `memory.Setup`; one process, CPU or CUDA)
    with the Trainer's default optimizer (fused AdamW), gradient clipping and `zero_grad(set_to_none=True)`.
    On CUDA the allocator's `max_memory_allocated`, on CPU `LiveTensorBytes`."""
    from .. import MoaiConfig, MoaiForCausalLM

    device = "cuda" if setup.cuda else "cpu"
    torch.manual_seed(seed)
    model_config = MoaiConfig(**config)
    model_config._attn_implementation = ATTENTION[setup.attention]
    model_config.loss_chunk_size = setup.loss_chunk
    meter = LiveTensorBytes()
    if setup.cuda:
        torch.cuda.reset_peak_memory_stats()
    with meter if not setup.cuda else contextlib.nullcontext():
        model = MoaiForCausalLM(model_config).to(device).train()
        if setup.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        rows, length = setup.micro_batch, setup.seq_len
        positions = torch.arange(length, device=device).repeat(rows, 1)
        positions[:, length // 2 :] -= length // 2  # [rows, seq]: two documents per row
        dtype = torch.bfloat16 if setup.mixed else torch.float32
        for _ in range(steps):
            for _ in range(accumulation):
                ids = torch.randint(3, model_config.vocab_size, (rows, length), device=device)
                with torch.autocast(device, dtype=dtype, enabled=setup.mixed):
                    loss = model(input_ids=ids, labels=ids, position_ids=positions).loss
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return torch.cuda.max_memory_allocated() if setup.cuda else meter.peak
