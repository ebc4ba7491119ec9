"""Fused/chunked losses against float64 references on full logits."""

import pytest
import torch
import torch.nn.functional as F

from moai_llm import MoaiForCausalLM
from moai_llm.losses import (
    Objective,
    causal_lm_loss,
    chunked_cross_entropy_loss,
    create_loss_function,
    fused_linear_cross_entropy,
    score_tokens,
)

from .conftest import tiny_config

TOKENS, HIDDEN = 60, 16


def _data(vocab, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(TOKENS, HIDDEN, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, HIDDEN, generator=g, dtype=torch.float64) * 0.5
    labels = torch.randint(0, vocab, (TOKENS,), generator=g)
    labels[:13] = -100  # the first chunks are entirely ignored for small chunk sizes
    labels[40:45] = -100
    return hidden.to(dtype), weight.to(dtype), labels


def _reference(hidden, weight, labels, objective: Objective, denom=None):
    """Straightforward formulas on full float64 logits."""
    keep = labels != -100
    logits = hidden.double()[keep] @ weight.double().T
    target = labels[keep]
    logp = F.log_softmax(logits, -1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    smooth = F.cross_entropy(logits, target, label_smoothing=objective.label_smoothing, reduction="none")
    focal = (1 - torch.exp(-nll)) ** objective.focal_gamma * nll
    z = torch.logsumexp(logits, -1) ** 2
    per_token = (
        objective.ce_weight * nll
        + objective.smooth_weight * smooth
        + objective.focal_weight * focal
        + objective.z_loss_coef * z
    )
    return per_token.sum() / (denom if denom is not None else max(int(keep.sum()), 1))


def _grads(fn, hidden, weight):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(hidden, weight)
    loss.backward()
    return loss.detach().double(), hidden.grad.double(), weight.grad.double()


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


OBJECTIVES = {
    "ce": Objective(),
    "focal": Objective(ce_weight=0, focal_weight=1, focal_gamma=2.0),
    "smoothing": Objective(ce_weight=0, smooth_weight=1, label_smoothing=0.1),
    "multi": Objective(ce_weight=0.5, focal_weight=0.3, focal_gamma=1.5, smooth_weight=0.2, label_smoothing=0.2),
    "z_loss": Objective(z_loss_coef=1e-3),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
@pytest.mark.parametrize("vocab", [37, 128])
def test_fused_loss_and_grads_match_float64(name, chunk_size, vocab):
    objective = OBJECTIVES[name]
    hidden, weight, labels = _data(vocab)
    ref = _grads(lambda h, w: _reference(h, w, labels, objective), hidden, weight)
    ours = _grads(
        lambda h, w: fused_linear_cross_entropy(h, w, labels, chunk_size=chunk_size, objective=objective),
        hidden.float(),
        weight.float(),
    )
    for a, b in zip(ours, ref):
        assert _rel(a, b) <= 1e-6


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_chunked_logits_loss_matches_float64(name):
    objective = OBJECTIVES[name]
    hidden, weight, labels = _data(50)
    ref_logits = (hidden @ weight.T).requires_grad_()  # float64
    ref = _reference(ref_logits, torch.eye(50, dtype=torch.float64), labels, objective)
    ref.backward()
    logits = (hidden @ weight.T).float().requires_grad_()
    loss = chunked_cross_entropy_loss(logits, labels, chunk_size=9, objective=objective)
    loss.backward()
    assert abs(loss.item() - ref.item()) <= 1e-6 * abs(ref.item())
    assert _rel(logits.grad.double(), ref_logits.grad) <= 1e-6
    assert torch.all(logits.grad[labels == -100] == 0)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_scorer_matches_float64_cross_entropy(chunk_size):
    """The one no-grad scorer (eval.py's perplexity, the trainer's eval loss): summed NLL and argmax hits."""
    hidden, weight, labels = _data(41)
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
    hidden, weight, _ = _data(37, torch.float32)
    labels = torch.full((TOKENS,), -100)
    hidden.requires_grad_()
    weight.requires_grad_()
    loss = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=8)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(hidden.grad == 0) and torch.all(weight.grad == 0)
    logits = torch.randn(TOKENS, 37, requires_grad=True)
    loss = chunked_cross_entropy_loss(logits, labels)
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(logits.grad).any()


def test_num_items_in_batch_divides_the_sum():
    hidden, weight, labels = _data(37, torch.float32)
    ours = fused_linear_cross_entropy(hidden, weight, labels, num_items_in_batch=100)
    ref = _reference(hidden, weight, labels, Objective(), denom=100)
    assert abs(ours.item() - ref.item()) <= 1e-6 * ref.item()


def test_bf16_inputs_within_bf16_tolerance():
    hidden, weight, labels = _data(128)
    ref = _grads(lambda h, w: _reference(h, w, labels, Objective()), hidden, weight)
    ours = _grads(
        lambda h, w: fused_linear_cross_entropy(h, w, labels, chunk_size=16), hidden.bfloat16(), weight.bfloat16()
    )
    assert _rel(ours[0], ref[0]) <= 2e-2
    assert _rel(ours[1], ref[1]) <= 3e-2 and _rel(ours[2], ref[2]) <= 3e-2


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
        ({"type": "focal", "params": {"gama": 2}}, "unknown params ['gama']"),
        ({"type": "label_smoothing", "params": {"epsilon": 1.5}}, "label_smoothing must be in [0, 1]"),
    ],
)
def test_create_loss_function_validates(spec, message):
    with pytest.raises(ValueError) as err:
        create_loss_function(spec)
    assert message in str(err.value)


def test_create_loss_function_presets():
    assert create_loss_function({"type": "focal", "params": {"gamma": 1.0}}).objective == Objective(
        ce_weight=0, focal_weight=1, focal_gamma=1.0
    )
    assert create_loss_function(None).objective == Objective()


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
        logits = model(ids).logits[:, :-1].reshape(-1, 128)
        shifted = labels[:, 1:].reshape(-1)
        loss = _reference(logits, torch.eye(128), shifted, create_loss_function(loss_config).objective)
        loss.backward()
        plain_loss, plain_grads = loss.item(), [p.grad.clone() for p in model.parameters()]
    assert abs(fused_loss - plain_loss) <= 1e-6 * plain_loss
    for a, b in zip(fused_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


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
