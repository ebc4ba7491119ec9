"""The model's losses: chunked and fused-linear cross-entropy, focal loss, label smoothing and their weighted mix.

Why hand-written: the reference loss keeps several fp32 `[tokens, vocab]` copies of the logits (4 GB each for 8K
tokens of a 122K vocabulary). Here at most one `[chunk, vocab]` fp32 block exists: the loss and gradient of every
objective are computed together, chunk by chunk, in one autograd Function, as Liger-Kernel's fused linear
cross-entropy does (CUDA/Triton only, no focal or mixed objective). Every objective's gradient has the form
`dl/dz = a * softmax(z) + b * onehot(target) + c` (per-token a, b, constant c), so one buffer suffices.

Ships next to the model as remote code, so it imports only torch and batch_format.py; the old tool's
`create_loss_function` / `LossFunction` live in legacy_losses.py and are still importable from here.
"""

import functools
import importlib
import json
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .batch_format import IGNORE_INDEX


@dataclass(frozen=True)
class Objective:
    """Weights of the mixed objective: ce_weight*CE + focal_weight*focal + smooth_weight*smoothed CE (+ z-loss)."""

    ce_weight: float = 1.0
    focal_weight: float = 0.0
    focal_gamma: float = 2.0
    smooth_weight: float = 0.0
    label_smoothing: float = 0.1
    z_loss_coef: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"loss params: {f.name} must be >= 0, got {getattr(self, f.name)}")
        if self.ce_weight + self.focal_weight + self.smooth_weight == 0:
            raise ValueError("loss params: ce_weight, focal_weight and smooth_weight are all 0; nothing to train")
        if not self.label_smoothing <= 1:
            raise ValueError(f"loss params: label_smoothing must be in [0, 1], got {self.label_smoothing}")

    def loss_and_grad(self, logits: torch.Tensor, target: torch.Tensor, need_grad: bool):
        """Summed loss of `logits` [n, vocab] (fp32, overwritten) and, if asked, dloss/dlogits in the same buffer."""
        vocab = logits.shape[-1]
        mean_logit = logits.mean(dim=-1) if self.smooth_weight else None  # [n]
        nll, lse, sum_exp, _ = _nll_(logits, target)
        exp = logits  # exp(z - row max) now
        loss = self.ce_weight * nll.sum()
        a = torch.full_like(lse, self.ce_weight)  # coefficient of softmax in the gradient
        b = torch.full_like(lse, -self.ce_weight)  # coefficient of onehot(target)
        c = 0.0
        if self.smooth_weight:
            eps = self.label_smoothing
            smooth = (1 - eps) * nll + eps * (lse - mean_logit)
            loss = loss + self.smooth_weight * smooth.sum()
            a += self.smooth_weight
            b -= self.smooth_weight * (1 - eps)
            c = -self.smooth_weight * eps / vocab
        if self.focal_weight:
            p_target = torch.exp(-nll)
            one_minus = (1 - p_target).clamp_min(torch.finfo(logits.dtype).tiny)
            gamma = self.focal_gamma
            loss = loss + self.focal_weight * (one_minus.pow(gamma) * nll).sum()
            # d/dz of -(1-p_t)^g * log p_t = coef * (onehot - softmax), coef below
            coef = -gamma * one_minus.pow(gamma - 1) * p_target * nll - one_minus.pow(gamma)
            a -= self.focal_weight * coef
            b += self.focal_weight * coef
        if self.z_loss_coef:
            loss = loss + self.z_loss_coef * lse.pow(2).sum()
            a += 2 * self.z_loss_coef * lse
        if not need_grad:
            return loss, None
        grad = exp.mul_((a / sum_exp)[:, None])  # softmax * a, in place: [n, vocab]
        if c:
            grad.add_(c)
        grad.scatter_add_(1, target[:, None], b[:, None])
        return loss, grad


def _nll_(logits: torch.Tensor, target: torch.Tensor):
    """(-log p_target, log-sum-exp, sum of exp(z - max), argmax), each [n], of fp32 `logits` [n, vocab], which
    become exp(z - row max) in place: torch.logsumexp would allocate a second [n, vocab] block."""
    target_logit = logits.gather(1, target[:, None]).squeeze(1)
    row_max, argmax = logits.max(dim=-1)
    sum_exp = logits.sub_(row_max[:, None]).exp_().sum(dim=-1)
    lse = row_max + sum_exp.log()
    return lse - target_logit, lse, sum_exp, argmax


@torch.no_grad()
def score_tokens(hidden, weight, bias, target, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL [float64], argmax hits [int64]) of `hidden` [tokens, hidden] through `weight` [vocab, hidden]
    against `target` [tokens]: plain cross-entropy, one fp32 `[chunk, vocab]` block at a time, no gradient. The row
    maximum of the stable log-sum-exp is also the argmax, so the accuracy costs no second pass."""
    nll = torch.zeros((), dtype=torch.float64, device=hidden.device)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    for start in range(0, target.numel(), chunk_size):
        logits = F.linear(hidden[start : start + chunk_size], weight, bias).float()  # [chunk, vocab]
        goal = target[start : start + chunk_size]  # [chunk]
        chunk_nll, _, _, predicted = _nll_(logits, goal)
        nll += chunk_nll.sum(dtype=torch.float64)
        correct += (predicted == goal).sum()
    return nll, correct


# Other spellings of Objective's fields: the old tool's (`smoothing`, `focal_gamma`) and the short ones.
PARAM_ALIASES = {"gamma": "focal_gamma", "epsilon": "label_smoothing", "smoothing": "label_smoothing"}
LOSS_PRESETS = {
    "cross_entropy": {"ce_weight": 1.0},
    "focal": {"ce_weight": 0.0, "focal_weight": 1.0},
    "label_smoothing": {"ce_weight": 0.0, "smooth_weight": 1.0},
    "multi_objective": {},
}


def objective_from_spec(spec: "dict | Objective | None" = None) -> Objective:
    """The Objective of `{"type": ..., "params": {...}}` (an Objective passes through); every mistake is one line
    naming the key."""
    if isinstance(spec, Objective):
        return spec
    if spec is not None and not isinstance(spec, dict):
        raise ValueError(
            f"loss config: expected a mapping {{'type': ..., 'params': {{...}}}}, got {type(spec).__name__}"
        )
    try:
        key = json.dumps(spec, sort_keys=True)
    except (TypeError, ValueError):
        return _parse_spec(spec)
    return _parse_spec_once(key)


@functools.lru_cache(maxsize=64)
def _parse_spec_once(key: str) -> Objective:
    """Each distinct spec is parsed once: the model reads `config.loss_config` on every forward."""
    return _parse_spec(json.loads(key))


def _parse_spec(spec: dict | None) -> Objective:
    spec = dict(spec or {})
    kind = spec.pop("type", "cross_entropy")
    params = spec.pop("params", None) or {}
    if spec:
        raise ValueError(f"loss config: unknown keys {sorted(spec)} (expected 'type' and 'params')")
    if kind not in LOSS_PRESETS:
        raise ValueError(f"loss config: type={kind!r} is not one of {sorted(LOSS_PRESETS)}")
    if not isinstance(params, dict):
        raise ValueError(f"loss config: params must be a mapping, got {type(params).__name__}")
    names = {f.name for f in fields(Objective)}
    unknown = sorted(set(params) - names - set(PARAM_ALIASES))
    if unknown:
        raise ValueError(f"loss config: unknown params {unknown}; known: {sorted(names | set(PARAM_ALIASES))}")
    resolved = {}
    for key, value in params.items():
        name = PARAM_ALIASES.get(key, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"loss params: {key} must be a number, got {value!r}")
        if name in resolved:
            spellings = sorted(k for k in params if PARAM_ALIASES.get(k, k) == name)
            raise ValueError(f"loss config: params {spellings} are the same parameter ({name}); give one")
        resolved[name] = value
    return Objective(**{**LOSS_PRESETS[kind], **resolved})


def _denominator(n_valid: int, num_items_in_batch, device) -> torch.Tensor:
    """transformers' gradient-accumulation convention: sum / num_items_in_batch when given, else the mean."""
    if num_items_in_batch is None:
        return torch.tensor(max(n_valid, 1), dtype=torch.float32, device=device)
    return torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=device).clamp_min(1)


class _FusedLinearLoss(torch.autograd.Function):
    """loss = objective(hidden @ weight.T + bias) summed over tokens / denom; never holds all logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, denom, objective, chunk_size):
        # Only the gradients asked for: a frozen lm_head (LoRA, QLoRA) costs no [vocab, hidden] buffer and no GEMM.
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_grad = need_hidden or need_weight or need_bias
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None  # [tokens, hidden]
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None  # [vocab, hidden]
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None  # [vocab]
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]  # [chunk, hidden]
            logits = F.linear(h, weight, bias).float()  # [chunk, vocab], the only one alive
            loss, grad = objective.loss_and_grad(logits, target[start : start + chunk_size], need_grad)
            total += loss
            if need_hidden:
                grad_hidden[start : start + chunk_size] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_weight:
                grad_weight.addmm_(grad.t(), h.float())
            if need_bias:
                grad_bias += grad.sum(0)
        if need_grad:
            # Kept as attributes, not save_for_backward: backward drops the only reference, so autograd adopts
            # these buffers as .grad instead of copying a [vocab, hidden] tensor.
            ctx.grads = [grad_hidden, grad_weight, grad_bias, denom]
            ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total / denom

    @staticmethod
    def backward(ctx, grad_output):
        # The precomputed gradients are scaled in place and handed over (no second [vocab, hidden] buffer), so
        # this graph can be differentiated only once.
        if not getattr(ctx, "grads", None):
            raise RuntimeError("fused linear cross-entropy: backward through the same loss twice is not supported")
        grad_hidden, grad_weight, grad_bias, denom = ctx.grads
        ctx.grads = None
        scale = grad_output / denom
        weight_dtype, bias_dtype = ctx.dtypes
        if ctx.needs_input_grad[0]:
            grad_hidden = grad_hidden.mul_(scale.to(grad_hidden.dtype))
        if ctx.needs_input_grad[1]:
            grad_weight = grad_weight.mul_(scale).to(weight_dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = (grad_bias * scale).to(bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


class _ChunkedLogitsLoss(torch.autograd.Function):
    """The objective on logits that already exist, one `[chunk, vocab]` fp32 block at a time; backward recomputes
    each chunk's softmax, as keeping the gradient would be a second logits-sized tensor."""

    @staticmethod
    def forward(ctx, logits, rows, target, denom, objective, chunk_size):
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        block = _block(logits, rows, chunk_size)
        for start in range(0, rows.numel(), chunk_size):
            chunk = slice(start, start + chunk_size)
            rows_fp32 = _gather_rows(logits, rows[chunk], block)
            total += objective.loss_and_grad(rows_fp32, target[chunk], need_grad=False)[0]
        if ctx.needs_input_grad[0]:
            ctx.objective, ctx.chunk_size = objective, chunk_size
            ctx.save_for_backward(logits, rows, target, denom)
        return total / denom

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        logits, rows, target, denom = ctx.saved_tensors
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        flat_grad = grad_logits.view(-1, logits.shape[-1])  # [positions, vocab]
        ignored = torch.ones(flat_grad.shape[0], dtype=torch.bool, device=logits.device)
        ignored[rows] = False
        flat_grad[ignored] = 0  # every other row is written below: one pass over the gradient, not two
        scale = grad_output / denom
        block = _block(logits, rows, ctx.chunk_size)
        for start in range(0, rows.numel(), ctx.chunk_size):
            chunk = slice(start, start + ctx.chunk_size)
            rows_fp32 = _gather_rows(logits, rows[chunk], block)
            grad = ctx.objective.loss_and_grad(rows_fp32, target[chunk], need_grad=True)[1]  # in place
            flat_grad.index_copy_(0, rows[chunk], grad.mul_(scale).to(logits.dtype))
        return grad_logits, None, None, None, None, None


def _block(logits, rows, chunk_size) -> torch.Tensor:
    """The one fp32 [chunk, vocab] buffer every chunk reuses (a fresh allocation per chunk costs page faults)."""
    return torch.empty(min(chunk_size, rows.numel()), logits.shape[-1], dtype=torch.float32, device=logits.device)


def _gather_rows(logits, rows, block) -> torch.Tensor:
    """The rows `rows` (flat positions over the leading dims) of logits, in fp32 in `block`: [n, vocab]."""
    out = block[: rows.numel()]
    if logits.dim() == 2 and logits.dtype == torch.float32:
        return torch.index_select(logits, 0, rows, out=out)
    if logits.dim() == 2:
        return out.copy_(logits.index_select(0, rows))
    # leading dims that do not merge into one without a copy (e.g. logits[:, :-1]): index each dim
    return out.copy_(logits[torch.unravel_index(rows, logits.shape[:-1])])


def chunked_cross_entropy_loss(
    logits,
    labels,
    chunk_size=2048,
    ignore_index=IGNORE_INDEX,
    num_items_in_batch=None,
    objective: Objective | None = None,
):
    """Loss of `logits` [..., vocab] against aligned `labels` [...] (no shift here), fp32 per chunk of valid tokens:
    their mean, or their sum / `num_items_in_batch` when given (transformers' gradient-accumulation convention)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not torch.is_grad_enabled():
        logits = logits.detach()
    if logits.dim() == 1:
        logits = logits[None]  # one token
    if labels.numel() != logits.numel() // max(logits.shape[-1], 1):
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)} (one label per "
            "row of logits, already shifted for next-token prediction)"
        )
    flat_labels = labels.to(logits.device).reshape(-1)
    rows = (flat_labels != ignore_index).nonzero().squeeze(1)  # [valid] flat positions of the valid tokens
    target = flat_labels[rows]  # [valid]
    try:
        logits = logits.view(-1, logits.shape[-1])  # [positions, vocab] when no copy is needed
    except RuntimeError:
        pass  # a strided view such as logits[:, :-1]: rows are gathered per leading dim instead
    lowest, highest = (int(target.min()), int(target.max())) if target.numel() else (0, 0)
    if lowest < 0 or highest >= logits.shape[-1]:
        raise ValueError(
            f"label {lowest if lowest < 0 else highest} is outside the vocabulary "
            f"[0, {logits.shape[-1]}) and is not ignore_index={ignore_index}"
        )
    denom = _denominator(target.numel(), num_items_in_batch, logits.device)
    return _ChunkedLogitsLoss.apply(logits, rows, target, denom, objective or Objective(), chunk_size)


def fused_linear_cross_entropy(
    hidden_states,
    weight,
    labels,
    bias=None,
    chunk_size=1024,
    ignore_index=IGNORE_INDEX,
    num_items_in_batch=None,
    objective: Objective | None = None,
):
    """Loss of `hidden_states` [..., hidden] projected by `weight` [vocab, hidden] against aligned `labels` [...];
    under `torch.no_grad` plain cross-entropy is `score_tokens`' sum (evaluation's one scorer)."""
    if not torch.is_grad_enabled():  # inside the Function grad mode is off, so decide here: no gradient work
        hidden_states, weight = hidden_states.detach(), weight.detach()
        bias = None if bias is None else bias.detach()
    flat_labels = labels.reshape(-1)
    keep = flat_labels != ignore_index
    target = flat_labels[keep]  # [valid]
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])[keep]  # [valid, hidden]
    denom = _denominator(target.numel(), num_items_in_batch, hidden_states.device)
    objective = objective or Objective()
    if not torch.is_grad_enabled() and objective == Objective():
        return (score_tokens(hidden, weight, bias, target, chunk_size)[0] / denom).float()
    return _FusedLinearLoss.apply(hidden, weight, bias, target, denom, objective, chunk_size)


def causal_lm_loss(
    hidden_states,
    lm_head_weight,
    labels,
    *,
    shift_labels=None,
    ignore_index=IGNORE_INDEX,
    num_items_in_batch=None,
    chunk_size=1024,
    loss_config=None,
    lm_head_bias=None,
):
    """Next-token loss from the final hidden states [batch, seq, hidden] and unshifted labels [batch, seq], shifted
    (unless `shift_labels` is given) and reduced as transformers' ForCausalLMLoss does."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    objective = objective_from_spec(getattr(loss_config, "objective", loss_config))  # LossFunction, Objective, spec
    return fused_linear_cross_entropy(
        hidden_states,
        lm_head_weight,
        shift_labels.to(hidden_states.device),
        bias=lm_head_bias,
        chunk_size=chunk_size,
        ignore_index=ignore_index,
        num_items_in_batch=num_items_in_batch,
        objective=objective,
    )


_LEGACY = ("LossFunction", "create_loss_function")


def __getattr__(name: str):
    """The old tool's `from moai_llm.losses import create_loss_function` path. Imported by name, not by a relative
    import statement: transformers ships every relatively imported sibling as remote code, and this one is not
    the model's."""
    if name in _LEGACY:
        return getattr(importlib.import_module(".legacy_losses", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Objective",
    "causal_lm_loss",
    "chunked_cross_entropy_loss",
    "fused_linear_cross_entropy",
    "objective_from_spec",
    "score_tokens",
]
