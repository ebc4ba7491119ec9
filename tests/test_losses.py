"""The losses against float64 formulas written with torch.nn.functional: the fused lm_head path, the callable from
`create_loss_function(spec)` on logits, chunking, reduction, memory, the specs and params it accepts, the model."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from moai_llm import MoaiForCausalLM
from moai_llm.losses import (
    LossFunction,
    Objective,
    causal_lm_loss,
    create_loss_function,
    fused_linear_cross_entropy,
    score_tokens,
)

from .conftest import tiny_config

TOKENS, HIDDEN, VOCAB = 60, 16, 29


def reference(logits, labels, objective: Objective, denom=None):
    """The objective on full float64 logits [..., vocab] (ignored labels dropped), summed then divided by `denom`
    (default: the valid tokens)."""
    keep = labels != -100
    z, target = logits.double()[keep], labels[keep]
    nll = F.cross_entropy(z, target, reduction="none")
    smooth = F.cross_entropy(z, target, label_smoothing=objective.label_smoothing, reduction="none")
    focal = (1 - torch.exp(-nll)) ** objective.focal_gamma * nll
    per_token = (
        objective.ce_weight * nll
        + objective.smooth_weight * smooth
        + objective.focal_weight * focal
        + objective.z_loss_coef * torch.logsumexp(z, -1) ** 2
    )
    return per_token.sum() / (denom if denom is not None else max(int(keep.sum()), 1))


def fused_data(vocab, dtype=torch.float64, seed=0):
    """hidden [60, 16], lm_head weight [vocab, 16], labels with the first 13 (whole small chunks) and 5 more ignored."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(TOKENS, HIDDEN, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, HIDDEN, generator=g, dtype=torch.float64) * 0.5
    labels = torch.randint(0, vocab, (TOKENS,), generator=g)
    labels[:13] = -100
    labels[40:45] = -100
    return hidden.to(dtype), weight.to(dtype), labels


def logits_batch(seed=0, dtype=torch.float32):
    """logits [3, 17, 29] (51 tokens) and labels with a fully ignored row and scattered ignored tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(3, 17, VOCAB, generator=g, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, VOCAB, (3, 17), generator=g)
    labels[0] = -100
    labels[2, 5:9] = -100
    return logits, labels


def grads(fn, *inputs):
    """(loss, gradient of every input), in float64."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    loss = fn(*inputs)
    loss.backward()
    return (loss.detach().double(), *(x.grad.double() for x in inputs))


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


OBJECTIVES = {
    "ce": Objective(),
    "focal": Objective(ce_weight=0, focal_weight=1, focal_gamma=2.0),
    "smoothing": Objective(ce_weight=0, smooth_weight=1, label_smoothing=0.1),
    "multi": Objective(ce_weight=0.5, focal_weight=0.3, focal_gamma=1.5, smooth_weight=0.2, label_smoothing=0.2),
    "z_loss": Objective(z_loss_coef=1e-3),
}
SPECS = {  # a config's loss spec, and the objective it means
    "cross_entropy": ({"type": "cross_entropy"}, Objective()),
    "focal": ({"type": "focal", "params": {"gamma": 2.0}}, Objective(ce_weight=0, focal_weight=1, focal_gamma=2.0)),
    "label_smoothing": (
        {"type": "label_smoothing", "params": {"smoothing": 0.15}},
        Objective(ce_weight=0, smooth_weight=1, label_smoothing=0.15),
    ),
    "multi_objective": (
        {
            "type": "multi_objective",
            "params": {
                "ce_weight": 0.6,
                "focal_weight": 0.3,
                "smooth_weight": 0.1,
                "focal_gamma": 1.5,
                "smoothing": 0.1,
            },
        },
        Objective(ce_weight=0.6, focal_weight=0.3, smooth_weight=0.1, focal_gamma=1.5, label_smoothing=0.1),
    ),
    "z_loss": ({"type": "cross_entropy", "params": {"z_loss_coef": 1e-3}}, Objective(z_loss_coef=1e-3)),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
@pytest.mark.parametrize("vocab", [37, 128])
def test_fused_loss_and_grads_match_float64(name, chunk_size, vocab):
    objective = OBJECTIVES[name]
    hidden, weight, labels = fused_data(vocab)
    ref = grads(lambda h, w: reference(h @ w.T, labels, objective), hidden, weight)
    ours = grads(
        lambda h, w: fused_linear_cross_entropy(h, w, labels, chunk_size=chunk_size, objective=objective),
        hidden.float(),
        weight.float(),
    )
    for a, b in zip(ours, ref):
        assert rel(a, b) <= 1e-6


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 4096])  # 33 valid tokens: 5 and 16 leave a short last chunk
@pytest.mark.parametrize("kind", list(SPECS))
def test_values_and_gradients_match_float64(kind, chunk_size):
    spec, objective = SPECS[kind]
    logits, labels = logits_batch()
    loss_fn = create_loss_function(spec, chunk_size=chunk_size)
    assert loss_fn.objective == objective
    logits = logits.requires_grad_()
    ours = loss_fn(logits, labels)
    ours.backward()
    ref, ref_grad = grads(lambda x: reference(x, labels, objective), logits.double())
    assert ours.dtype == torch.float32 and ours.shape == ()
    assert rel(ours, ref) <= 1e-6, (ours, ref)
    assert rel(logits.grad, ref_grad) <= 1e-6
    assert torch.all(logits.grad[labels == -100] == 0)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_scorer_matches_float64_cross_entropy(chunk_size):
    """The one no-grad scorer (eval.py's perplexity, the trainer's eval loss): summed NLL and argmax hits."""
    hidden, weight, labels = fused_data(41)
    logits = hidden @ weight.T  # float64
    labels[50:] = logits[50:].argmax(-1)  # some hits to count
    keep = labels != -100
    nll, correct = score_tokens(hidden.float()[keep], weight.float(), None, labels[keep], chunk_size)
    expected = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
    assert nll.dtype == torch.float64 and abs(nll.item() - expected) <= 1e-6 * expected
    assert correct.item() == (logits.argmax(-1) == labels)[keep].sum().item() > 0
    with torch.no_grad():  # the fused loss under no_grad is the scorer's sum over the valid tokens
        fused = fused_linear_cross_entropy(hidden.float(), weight.float(), labels, chunk_size=chunk_size)
    assert abs(fused.item() * keep.sum().item() - expected) <= 1e-6 * expected


def test_all_ignored_gives_zero_loss_and_zero_grads_not_nan():
    hidden, weight, _ = fused_data(37, torch.float32)
    labels = torch.full((TOKENS,), -100)
    loss, hidden_grad, weight_grad = grads(
        lambda h, w: fused_linear_cross_entropy(h, w, labels, chunk_size=8), hidden, weight
    )
    assert loss.item() == 0.0 and torch.all(hidden_grad == 0) and torch.all(weight_grad == 0)
    logits, labels = logits_batch()
    labels[:] = -100
    loss, grad = grads(lambda x: create_loss_function(SPECS["focal"][0], chunk_size=4)(x, labels), logits)
    assert loss.item() == 0.0 and torch.all(grad == 0)


@pytest.mark.parametrize("kind", ["focal", "multi_objective"])
def test_num_items_in_batch_divides_the_sum(kind):
    spec, objective = SPECS[kind]
    logits, labels = logits_batch(1)
    loss_fn = create_loss_function(spec, chunk_size=7)
    ours = grads(lambda x: loss_fn(x, labels, num_items_in_batch=100), logits)
    ref = grads(lambda x: reference(x, labels, objective, denom=100), logits.double())
    assert all(rel(a, b) <= 1e-6 for a, b in zip(ours, ref))
    hidden, weight, labels = fused_data(37, torch.float32)
    fused = grads(
        lambda h, w: fused_linear_cross_entropy(h, w, labels, num_items_in_batch=100, objective=objective),
        hidden,
        weight,
    )
    ref = grads(lambda h, w: reference(h @ w.T, labels, objective, denom=100), hidden.double(), weight.double())
    assert all(rel(a, b) <= 1e-6 for a, b in zip(fused, ref))


def test_aligned_labels_on_a_non_contiguous_view():
    """No shift happens inside: the caller aligns, here with views of unshifted logits/labels (not copied)."""
    logits, labels = logits_batch(2)
    spec, objective = SPECS["label_smoothing"]
    loss_fn = create_loss_function(spec, chunk_size=6)
    ours, grad = grads(lambda x: loss_fn(x[:, :-1], labels[:, 1:]), logits)
    ref, ref_grad = grads(lambda x: reference(x[:, :-1], labels[:, 1:], objective), logits.double())
    assert rel(ours, ref) <= 1e-6 and rel(grad, ref_grad) <= 1e-6
    assert torch.all(grad[:, -1] == 0)


def test_bf16_inputs_within_bf16_tolerance():
    """Both paths take bf16: the fused one from bf16 hidden states and weights, the callable from bf16 logits (its
    gradient stays bf16); the loss is fp32 either way."""
    hidden, weight, labels = fused_data(128)
    ref = grads(lambda h, w: reference(h @ w.T, labels, Objective()), hidden, weight)
    ours = grads(
        lambda h, w: fused_linear_cross_entropy(h, w, labels, chunk_size=16), hidden.bfloat16(), weight.bfloat16()
    )
    assert rel(ours[0], ref[0]) <= 2e-2
    assert rel(ours[1], ref[1]) <= 3e-2 and rel(ours[2], ref[2]) <= 3e-2

    logits, labels = logits_batch(3, torch.bfloat16)
    logits.requires_grad_()
    loss = create_loss_function(chunk_size=8)(logits, labels)
    loss.backward()
    ref, ref_grad = grads(lambda x: reference(x, labels, Objective()), logits.double())
    assert logits.grad.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert rel(loss, ref) <= 1e-6 and rel(logits.grad, ref_grad) <= 1e-2


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
    loss_fn = create_loss_function(SPECS["multi_objective"][0], chunk_size=chunk)
    with _Allocations() as forward:
        loss = loss_fn(logits, labels)
    with _Allocations() as backward:
        loss.backward()
    assert max(forward.numels) <= chunk * vocab  # never a copy of all logits
    big = sorted(n for n in backward.numels if n > chunk * vocab)
    assert big == [tokens * vocab], big  # the gradient itself, nothing else of that size


def test_causal_lm_loss_shifts_like_transformers():
    from transformers.loss.loss_utils import ForCausalLMLoss

    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 9, HIDDEN, generator=g)
    weight = torch.randn(50, HIDDEN, generator=g)
    labels = torch.randint(0, 50, (2, 9), generator=g)
    labels[1, :3] = -100
    ref = ForCausalLMLoss(hidden @ weight.T, labels, vocab_size=50)
    assert abs(causal_lm_loss(hidden, weight, labels, chunk_size=5).item() - ref.item()) <= 1e-6 * ref.item()


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "focal", "params": {"focal_weight": -1}}, "focal_weight must be >= 0"),
        ({"type": "multi_objective", "params": {"ce_weight": 0}}, "all 0"),
        ({"type": "dice"}, "type='dice'"),
        ({"type": "label_smoothing", "params": {"epsilon": 1.5}}, "label_smoothing must be in [0, 1]"),
        (
            {"type": "focal", "params": {"gamma": 2.0, "focal_gamma": 3.0}},
            "params ['focal_gamma', 'gamma'] are the same parameter (focal_gamma)",
        ),
        ({"type": "focal", "params": {"smoothing": 0.1, "epsilon": 0.1}}, "are the same parameter (label_smoothing)"),
        (
            {"type": "focal", "params": {"alpha": 0.25}},
            (
                "unknown params ['alpha']; known: ['ce_weight', 'epsilon', 'focal_gamma', 'focal_weight', "
                "'gamma', 'label_smoothing', 'smooth_weight', 'smoothing', 'z_loss_coef']"
            ),
        ),
        ({"type": "focal", "params": {"gamma": "2"}}, "gamma must be a number, got '2'"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(ValueError) as error:
        create_loss_function(spec)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_presets_and_param_spellings():
    assert create_loss_function(None).objective == Objective()
    assert create_loss_function({"type": "focal", "params": {"gamma": 1.0}}).objective == Objective(
        ce_weight=0, focal_weight=1, focal_gamma=1.0
    )
    for spellings in (
        [{"smoothing": 0.2}, {"label_smoothing": 0.2}, {"epsilon": 0.2}],
        [{"gamma": 3.0}, {"focal_gamma": 3.0}],
    ):
        objectives = [create_loss_function({"type": "multi_objective", "params": p}).objective for p in spellings]
        assert (
            all(o == objectives[0] for o in objectives)
            and objectives[0] != create_loss_function({"type": "multi_objective"}).objective
        )


def test_bad_inputs_are_clear_errors():
    logits, labels = logits_batch()
    with pytest.raises(ValueError, match=r"labels \(3, 16\) do not match logits \(3, 17, 29\)"):
        create_loss_function()(logits, labels[:, 1:])
    labels[1, 3] = VOCAB
    with pytest.raises(ValueError, match="label 29 is outside the vocabulary"):
        create_loss_function()(logits, labels)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        create_loss_function(chunk_size=0)


def _model_grads(model, ids, labels):
    model.zero_grad()
    loss = model(ids, labels=labels).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("loss_config", [None, {"type": "multi_objective", "params": {"focal_weight": 0.5}}])
def test_model_fused_path_equals_plain_path(loss_config):
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(loss_chunk_size=16, loss_config=loss_config))
    ids = torch.randint(3, 128, (2, 20))
    labels = ids.clone()
    labels[0, :5] = -100
    fused_loss, fused_grads = _model_grads(model, ids, labels)
    if loss_config is None:  # plain path: transformers' own loss on full logits
        model.config.loss_chunk_size = 0
        plain_loss, plain_grads = _model_grads(model, ids, labels)
    else:  # the reference formula on full logits
        model.zero_grad()
        logits = model(ids).logits[:, :-1]
        loss = reference(logits, labels[:, 1:], create_loss_function(loss_config).objective)
        loss.backward()
        plain_loss, plain_grads = loss.item(), [p.grad.clone() for p in model.parameters()]
    assert abs(fused_loss - plain_loss) <= 1e-6 * plain_loss
    for a, b in zip(fused_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_objective_reaches_the_fused_path():
    """The model's fused loss from hidden states equals the callable on the model's own logits."""
    spec = SPECS["multi_objective"][0]
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


def test_logits_only_when_asked_and_logits_to_keep_works():
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config())
    ids = torch.randint(3, 128, (1, 12))
    assert model(ids, labels=ids).logits is None
    out = model(ids, labels=ids, return_logits=True, logits_to_keep=1)
    assert out.logits.shape == (1, 1, 128)
    assert torch.allclose(out.logits[0, -1], model(ids).logits[0, -1], atol=1e-6)


def test_gradient_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(loss_chunk_size=8))
    ids = torch.randint(3, 128, (4, 16))
    labels = ids.clone()
    labels[1, :10] = -100  # micro-batches with different token counts
    labels[3, 4:] = -100
    model(ids, labels=labels).loss.backward()
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    num_items = (labels[:, 1:] != -100).sum()
    for i in range(4):
        model(ids[i : i + 1], labels=labels[i : i + 1], num_items_in_batch=num_items).loss.backward()
    for a, p in zip(big, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-5)
