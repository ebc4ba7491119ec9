"""Trainer callbacks: throughput/MFU/packing meter and graceful stop on SIGTERM or Ctrl-C."""

import logging
import signal
import time

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from ..batch_format import IGNORE_INDEX
from ..configuration_moai import is_moe_layer

logger = logging.getLogger(__name__)

# Dense bf16 peak TFLOP/s per device, by substring of the CUDA device name (vendor data sheets, no sparsity).
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,
}


def detect_peak_tflops() -> float | None:
    """Peak TFLOP/s of the local CUDA device when it is a known one; None on CPU (no meaningful peak)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token, 6 x matmul parameters + attention (PaLM, appendix B); MoE counts active experts."""
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    num_experts = getattr(config, "num_experts", 0) or 0
    dense_mlp = 3 * hidden * config.intermediate_size
    params = 0
    for layer in range(config.num_hidden_layers):
        if is_moe_layer(config, layer):
            mlp = config.num_experts_per_tok * 3 * hidden * config.moe_intermediate_size + hidden * num_experts
            shared = getattr(config, "shared_expert_intermediate_size", 0) or 0
            mlp += (3 * hidden * shared + hidden) if shared else 0  # the shared expert and its gate
        else:
            mlp = dense_mlp
        params += attention + mlp
    params += hidden * config.vocab_size  # lm_head matmul (tied or not)
    return 6.0 * params + 12.0 * config.num_hidden_layers * heads * head_dim * seq_len


class ThroughputCallback(TrainerCallback):
    """Counts the tokens of every micro-batch (`observe`, fed by the trainer) between logging steps; `pop_logs`, merged
    into each training log line, returns tokens/s, MFU and packing efficiency."""

    def __init__(self, flops_per_token: float, peak_tflops: float | None, world_size: int = 1):
        self.flops_per_token = flops_per_token
        self.peak_tflops = peak_tflops
        self.world_size = world_size
        self.tokens_seen = 0  # cumulative non-pad tokens, summed over all ranks
        self._reset()

    def _reset(self):
        self.tokens = 0  # non-pad tokens fed to the model
        self.useful = 0  # tokens that carry a label
        self.slots = 0  # token positions computed, padding included
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._reset()
        # a resumed run continues the count logged up to its checkpoint (every save step is logged: on_step_end)
        self.tokens_seen = next((e["tokens_seen"] for e in reversed(state.log_history) if "tokens_seen" in e), 0)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # the checkpoint's log history then holds the count at its own step
            control.should_log = True
        return control

    def observe(self, input_ids: torch.Tensor, labels: torch.Tensor | None, pad_token_id: int | None) -> None:
        # tensors accumulate on the batch's device: no host sync per micro-batch, only in pop_logs
        real = input_ids.ne(pad_token_id).sum() if pad_token_id is not None else input_ids.numel()
        self.tokens = self.tokens + real
        self.useful = self.useful + (labels[:, 1:].ne(IGNORE_INDEX).sum() if labels is not None else real)
        self.slots += input_ids.numel()

    def pop_logs(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        logs = {}
        # all ranks' counts since the last log (every rank logs at the same steps), not rank 0's x world
        counts = torch.tensor([int(self.tokens), int(self.useful), int(self.slots)], dtype=torch.float64)
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            counts = counts.to("cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(counts)
        else:  # no process group to ask: this rank's count stands for each rank's
            counts *= self.world_size
        self.tokens, self.useful, self.slots = (int(x) for x in counts.tolist())
        if self.tokens:
            self.tokens_seen += self.tokens
            logs["tokens_seen"] = self.tokens_seen
            tokens_per_s = self.tokens / elapsed
            logs["tokens_per_second"] = round(tokens_per_s, 1)
            logs["useful_tokens_per_second"] = round(self.useful / elapsed, 1)
            logs["packing_efficiency"] = round(self.tokens / self.slots, 4)
            achieved = tokens_per_s / self.world_size * self.flops_per_token / 1e12
            logs["tflops_per_device"] = round(achieved, 4)
            if self.peak_tflops:
                logs["mfu"] = round(achieved / self.peak_tflops, 4)
        self._reset()
        return logs


class GracefulStopCallback(TrainerCallback):
    """SIGTERM / SIGINT: finish the current optimizer step, save a checkpoint, stop; the CLI then exits 0.

    The second signal (often torchrun's agent forwarding a second Ctrl-C, or a scheduler and the agent both) is
    ignored so that it cannot cut the save short; the third falls back to the previous handler. The handlers stay
    installed until `restore()`, so the run's final save is covered too.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    ABORT_AFTER = 3

    def __init__(self):
        self.requested = False
        self.received = 0
        self.stopped_at: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received += 1
        name = signal.Signals(signum).name
        if self.received >= self.ABORT_AFTER:
            logger.warning("received %s a third time: aborting", name)
            self.restore()
            signal.raise_signal(signum)
            return
        if self.received == 1:
            logger.warning("received %s: saving a checkpoint after this step and stopping", name)
        else:
            logger.warning("received %s again: still saving, ignored (a third signal or SIGKILL aborts)", name)
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        if not self._previous:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put back the handlers that were there before training."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.requested
        if dist.is_available() and dist.is_initialized():  # every rank stops at the same step
            flag = torch.tensor([float(requested)], device=args.device)
            dist.all_reduce(flag)
            requested = bool(flag.item())
        if requested:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control
