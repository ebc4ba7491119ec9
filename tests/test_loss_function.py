"""`create_loss_function(spec)` returns a callable loss: values and gradients against float64 formulas written
with torch.nn.functional, chunking, reduction, memory, and the spellings its params accept."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from moai_llm import MoaiForCausalLM
from moai_llm.losses import LossFunction, causal_lm_loss, create_loss_function

from .conftest import tiny_config

VOCAB = 29
SPECS = {
    "cross_entropy": {"type": "cross_entropy"},
    "focal": {"type": "focal", "params": {"gamma": 2.0}},
    "label_smoothing": {"type": "label_smoothing", "params": {"smoothing": 0.15}},
    "multi_objective": {
        "type": "multi_objective",
        "params": {"ce_weight": 0.6, "focal_weight": 0.3, "smooth_weight": 0.1, "focal_gamma": 1.5, "smoothing": 0.1},
    },
}


def reference(logits, labels, spec, num_items=None):
    """The objective on full float64 logits, from F.cross_entropy / F.log_softmax, summed then reduced."""
    params = spec.get("params", {})
    keep = labels != -100
    z, t = logits.double()[keep], labels[keep]  # [valid, vocab], [valid]
    ce = F.cross_entropy(z, t, reduction="sum")
    smooth = F.cross_entropy(z, t, reduction="sum", label_smoothing=params.get("smoothing", 0.1))
    log_p = F.log_softmax(z, dim=-1).gather(1, t[:, None]).squeeze(1)
    focal = (-((1 - log_p.exp()) ** params.get("gamma", params.get("focal_gamma", 2.0))) * log_p).sum()
    weights = {"cross_entropy": (1, 0, 0), "focal": (0, 1, 0), "label_smoothing": (0, 0, 1)}.get(
        spec["type"], (params.get("ce_weight"), params.get("focal_weight"), params.get("smooth_weight"))
    )
    total = weights[0] * ce + weights[1] * focal + weights[2] * smooth
    return total / (num_items if num_items is not None else max(int(keep.sum()), 1))


def batch(seed=0, dtype=torch.float32):
    """logits [3, 17, vocab] (51 tokens) and labels with a fully ignored row and scattered ignored tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(3, 17, VOCAB, generator=g, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, VOCAB, (3, 17), generator=g)
    labels[0] = -100
    labels[2, 5:9] = -100
    return logits, labels


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def value_and_grad(fn, logits):
    logits = logits.detach().clone().requires_grad_()
    loss = fn(logits)
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 4096])  # 33 valid tokens: 5 and 16 leave a short last chunk
@pytest.mark.parametrize("kind", list(SPECS))
def test_values_and_gradients_match_float64(kind, chunk_size):
    logits, labels = batch()
    loss_fn = create_loss_function(SPECS[kind], chunk_size=chunk_size)
    ours, ours_grad = value_and_grad(lambda x: loss_fn(x, labels), logits)
    ref, ref_grad = value_and_grad(lambda x: reference(x, labels, SPECS[kind]), logits.double())
    assert ours.dtype == torch.float32 and ours.shape == ()
    assert rel(ours, ref) <= 1e-6, (ours, ref)
    assert rel(ours_grad, ref_grad) <= 1e-6
    assert torch.all(ours_grad[labels == -100] == 0)


@pytest.mark.parametrize("kind", ["focal", "multi_objective"])
def test_num_items_in_batch_divides_the_sum(kind):
    logits, labels = batch(1)
    loss_fn = create_loss_function(SPECS[kind], chunk_size=7)
    ours, ours_grad = value_and_grad(lambda x: loss_fn(x, labels, num_items_in_batch=100), logits)
    ref, ref_grad = value_and_grad(lambda x: reference(x, labels, SPECS[kind], num_items=100), logits.double())
    assert rel(ours, ref) <= 1e-6 and rel(ours_grad, ref_grad) <= 1e-6


def test_all_ignored_gives_zero_not_nan():
    logits, labels = batch()
    labels[:] = -100
    loss, grad = value_and_grad(lambda x: create_loss_function(SPECS["focal"], chunk_size=4)(x, labels), logits)
    assert loss.item() == 0.0 and torch.all(grad == 0)


def test_aligned_labels_on_a_non_contiguous_view():
    """No shift happens inside: the caller aligns, here with views of unshifted logits/labels (not copied)."""
    logits, labels = batch(2)
    loss_fn = create_loss_function(SPECS["label_smoothing"], chunk_size=6)
    ours, grad = value_and_grad(lambda x: loss_fn(x[:, :-1], labels[:, 1:]), logits)
    ref, ref_grad = value_and_grad(
        lambda x: reference(x[:, :-1], labels[:, 1:], SPECS["label_smoothing"]), logits.double()
    )
    assert rel(ours, ref) <= 1e-6 and rel(grad, ref_grad) <= 1e-6
    assert torch.all(grad[:, -1] == 0)


def test_bf16_logits_give_bf16_gradients_within_bf16_tolerance():
    logits, labels = batch(3, torch.bfloat16)
    loss, grad = value_and_grad(lambda x: create_loss_function(chunk_size=8)(x, labels), logits)
    ref, ref_grad = value_and_grad(lambda x: reference(x, labels, SPECS["cross_entropy"]), logits.double())
    assert grad.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert rel(loss, ref) <= 1e-6 and rel(grad, ref_grad) <= 1e-2


class _Allocations(TorchDispatchMode):
    """Sizes of the new tensors every op produces (outputs that alias an input are views, not allocations)."""

    def __init__(self):
        super().__init__()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.numels.append(t.numel())
        return out


def test_at_most_one_chunk_of_logits_is_allocated():
    torch.manual_seed(0)
    tokens, vocab, chunk = 64, 1000, 8
    logits = torch.randn(tokens, vocab, requires_grad=True)
    labels = torch.randint(0, vocab, (tokens,))
    labels[::3] = -100
    loss_fn = create_loss_function(SPECS["multi_objective"], chunk_size=chunk)
    with _Allocations() as forward:
        loss = loss_fn(logits, labels)
    with _Allocations() as backward:
        loss.backward()
    assert max(forward.numels) <= chunk * vocab  # never a copy of all logits
    big = sorted(n for n in backward.numels if n > chunk * vocab)
    assert big == [tokens * vocab], big  # the gradient itself, nothing else of that size


@pytest.mark.parametrize(
    "spellings",
    [
        [{"smoothing": 0.2}, {"label_smoothing": 0.2}, {"epsilon": 0.2}],
        [{"gamma": 3.0}, {"focal_gamma": 3.0}],
    ],
)
def test_param_spellings_are_the_same_parameter(spellings):
    objectives = [create_loss_function({"type": "multi_objective", "params": p}).objective for p in spellings]
    assert all(o == objectives[0] for o in objectives)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"gamma": 2.0, "focal_gamma": 3.0}, "params ['focal_gamma', 'gamma'] are the same parameter (focal_gamma)"),
        ({"smoothing": 0.1, "epsilon": 0.1}, "are the same parameter (label_smoothing)"),
        (
            {"alpha": 0.25},
            (
                "unknown params ['alpha']; known: ['ce_weight', 'epsilon', 'focal_gamma', 'focal_weight', "
                "'gamma', 'label_smoothing', 'smooth_weight', 'smoothing', 'z_loss_coef']"
            ),
        ),
        ({"gamma": "2"}, "gamma must be a number, got '2'"),
    ],
)
def test_bad_params_are_one_line_errors(params, message):
    with pytest.raises(ValueError) as error:
        create_loss_function({"type": "focal", "params": params})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_inputs_are_clear_errors():
    logits, labels = batch()
    with pytest.raises(ValueError, match=r"labels \(3, 16\) do not match logits \(3, 17, 29\)"):
        create_loss_function()(logits, labels[:, 1:])
    labels[1, 3] = VOCAB
    with pytest.raises(ValueError, match="label 29 is outside the vocabulary"):
        create_loss_function()(logits, labels)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        create_loss_function(chunk_size=0)


def test_objective_reaches_the_fused_path():
    """The model's fused loss from hidden states equals the callable on the model's own logits."""
    spec = SPECS["multi_objective"]
    loss_fn = create_loss_function(spec, chunk_size=5)
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(loss_chunk_size=16, loss_config=spec)).eval()
    ids = torch.randint(3, 128, (2, 12))
    labels = ids.clone()
    labels[0, :4] = -100
    out = model(ids, labels=labels, return_logits=True)
    from_logits = loss_fn(out.logits[:, :-1], labels[:, 1:])
    assert abs(out.loss.item() - from_logits.item()) <= 1e-5 * from_logits.item()
    hidden = torch.randn(2, 12, 64)
    weight = model.lm_head.weight.detach()
    assert causal_lm_loss(hidden, weight, labels, loss_config=loss_fn).item() == pytest.approx(
        causal_lm_loss(hidden, weight, labels, loss_config=spec).item(), rel=1e-7
    )
    assert isinstance(loss_fn, LossFunction)
    assert create_loss_function(model.config.loss_config).objective == loss_fn.objective
