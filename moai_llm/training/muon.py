"""`--optim muon`: Muon for the decoder's hidden matrices, AdamW for everything else, in one optimizer.

Why written here: `torch.optim.Muon` takes 2-D parameters only (not the 3-D `Qwen3MoeExperts` stacks), runs one
matrix at a time, has no AdamW side and knows nothing of DDP or FSDP.
- Muon's: the weight matrices of a decoder layer's linear layers and expert stacks (each expert's slice is one
  matrix). Embeddings, lm_head, norms, biases and the MoE router stay on AdamW (nanochat, Moonlight): the router's
  rows, like lm_head's, set the logits' scale, which Muon's equal step in every direction would ignore.
- the update: Nesterov momentum, Newton-Schulz (5 quintic steps) batched over matrices of one shape, scaled by
  0.2 * sqrt(max(out, in)) to AdamW's update RMS (Moonshot), so AdamW's learning rate and weight decay carry over.
- one optimizer: both kinds are param groups of one object, so the schedule and one state dict cover both.
- distributed: each rank orthogonalises its share of each shape's matrices, then they are all-gathered; under FSDP2
  the update is gathered whole first and each rank keeps its shard: the same update as one process.
"""

import math

import torch
import torch.distributed as dist
from torch import nn

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # quintic coefficients (Keller Jordan's Muon)
RMS_MATCH = 0.2  # Muon update RMS = AdamW's typical update RMS


def muon_param_groups(model: nn.Module, weight_decay: float, decay_names: set[str]) -> list[dict]:
    """[Muon matrices, AdamW with decay, AdamW without decay]. Muon's: the weights of the decoder's linear layers and
    expert stacks, both sides > 1; the embeddings and lm_head are never Muon's."""
    outside = {
        id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m for p in m.parameters()
    }
    modules = dict(model.named_modules())
    groups = {"muon": [], "decay": [], "no_decay": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        owner = name.rsplit(".", 1)[0]
        matrix = id(parameter) not in outside and parameter.ndim >= 2 and min(parameter.shape[-2:]) >= 2
        if matrix and (isinstance(modules.get(owner, model), nn.Linear) or owner.endswith("experts")):
            groups["muon"].append(parameter)
        else:
            groups["decay" if name in decay_names else "no_decay"].append(parameter)
    return [
        {"params": groups["muon"], "muon": True, "weight_decay": weight_decay},
        {"params": groups["decay"], "muon": False, "weight_decay": weight_decay},
        {"params": groups["no_decay"], "muon": False, "weight_decay": 0.0},
    ]


def orthogonalize(update: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Newton-Schulz iteration towards U V^T of each matrix in `update` [..., rows, cols] (batched)."""
    a, b, c = NEWTON_SCHULZ
    x = update.to(torch.bfloat16 if update.is_cuda else torch.float32)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT  # [..., rows, rows]
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(update.dtype)


def shared_work(matrices: torch.Tensor, steps: int) -> torch.Tensor:
    """Orthogonalise [count, rows, cols] with the count split across ranks, then all-gathered; every rank must hold
    the same `matrices` (DDP's averaged gradients, or FSDP's gathered ones)."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1 or matrices.shape[0] < 2:
        return orthogonalize(matrices, steps)
    share = -(-matrices.shape[0] // world)
    padded = torch.cat([matrices, matrices.new_zeros(share * world - matrices.shape[0], *matrices.shape[1:])])
    mine = orthogonalize(padded[dist.get_rank() * share : (dist.get_rank() + 1) * share], steps).contiguous()
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    return torch.cat(gathered)[: matrices.shape[0]]


class MuonAdamW(torch.optim.Optimizer):
    """Param groups with `muon: True` take Muon steps, the others AdamW steps (decoupled weight decay)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            muon=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (self._muon_step if group["muon"] else self._adamw_step)(group)
        return loss

    def _adamw_step(self, group: dict) -> None:
        """torch.optim.AdamW's arithmetic, so the AdamW groups step as they would in AdamW."""
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = float(state["step"])
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            p.mul_(1 - group["lr"] * group["weight_decay"])
            denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**step))

    def _muon_step(self, group: dict) -> None:
        updates = {}  # parameter -> momentum-applied gradient, whole (FSDP shards gathered)
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buffer = state["momentum_buffer"]
            buffer.lerp_(p.grad, 1 - group["momentum"])
            update = p.grad.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer
            updates[p] = update.full_tensor() if hasattr(update, "full_tensor") else update
        by_shape: dict[tuple, list] = {}
        for p, update in updates.items():
            by_shape.setdefault(tuple(update.shape[-2:]), []).append(p)
        for (rows, cols), params in by_shape.items():
            stacked = torch.cat([updates[p].reshape(-1, rows, cols) for p in params])  # [matrices, rows, cols]
            done = shared_work(stacked, group["ns_steps"]) * (RMS_MATCH * math.sqrt(max(rows, cols)))
            for p, update in zip(params, done.split([updates[p].numel() // (rows * cols) for p in params])):
                self._apply(p, update.reshape(updates[p].shape), group)

    @staticmethod
    def _apply(p: torch.Tensor, update: torch.Tensor, group: dict) -> None:
        """p <- p * (1 - lr * wd) - lr * update; for an FSDP2 DTensor, on this rank's shard of `update`."""
        if hasattr(p, "to_local"):
            from torch.distributed.tensor import distribute_tensor

            update = distribute_tensor(update, p.device_mesh, p.placements, src_data_rank=None).to_local()
            p = p.to_local()
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update.to(p.dtype), alpha=-group["lr"])
