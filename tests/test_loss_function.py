"""`create_loss_function(spec)` returns a callable loss, as the old moai-llm README used it."""

import math

import pytest
import torch
import torch.nn.functional as F

from moai_llm.losses import LossFunction, Objective, create_loss_function

VOCAB = 53


def _inputs(shape=(3, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, VOCAB, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, VOCAB, shape, generator=g)
    labels[0, :9] = -100  # whole chunks without a valid token for small chunk sizes
    labels[2, 5:8] = -100
    return logits, labels


def _reference(kind: str, logits, labels, gamma=2.0, smoothing=0.1, weights=(0.6, 0.3, 0.1), denom=None):
    """Independent float64 formulas from torch.nn.functional on the full logits."""
    flat, target = logits.reshape(-1, VOCAB), labels.reshape(-1)
    keep = target != -100
    flat, target = flat[keep], target[keep]
    ce = F.cross_entropy(flat, target, reduction="none")
    focal = (1 - torch.exp(-ce)) ** gamma * ce
    smooth = F.cross_entropy(flat, target, label_smoothing=smoothing, reduction="none")
    per_token = {"cross_entropy": ce, "focal": focal, "label_smoothing": smooth,
                 "multi_objective": weights[0] * ce + weights[1] * focal + weights[2] * smooth}[kind]
    return per_token.sum() / (denom if denom is not None else keep.sum())


SPECS = {
    "cross_entropy": {"type": "cross_entropy"},
    "focal": {"type": "focal", "params": {"gamma": 2.0}},
    "label_smoothing": {"type": "label_smoothing", "params": {"smoothing": 0.1}},
    # the old tool's documented multi-objective config, spelled exactly as its README wrote it
    "multi_objective": {"type": "multi_objective", "params": {"ce_weight": 0.6, "focal_weight": 0.3,
                                                             "smooth_weight": 0.1, "focal_gamma": 2.0,
                                                             "smoothing": 0.1}},
}


@pytest.mark.parametrize("kind", list(SPECS))
@pytest.mark.parametrize("chunk_size", [1, 7, 16, 2048])
@pytest.mark.parametrize("num_items", [None, 97])
def test_callable_matches_float64_formulas_values_and_gradients(kind, chunk_size, num_items):
    logits64, labels = _inputs()
    ref_logits = logits64.clone().requires_grad_()
    ref = _reference(kind, ref_logits, labels, denom=num_items)
    ref.backward()
    loss_fn = create_loss_function(SPECS[kind], chunk_size=chunk_size)
    logits = logits64.float().requires_grad_()
    loss = loss_fn(logits, labels, num_items_in_batch=num_items)
    loss.backward()
    assert abs(loss.item() - ref.item()) <= 1e-6 * abs(ref.item())
    scale = ref_logits.grad.abs().max()
    assert ((logits.grad.double() - ref_logits.grad).abs().max() / scale).item() <= 1e-6
    assert torch.all(logits.grad[labels == -100] == 0)


def test_old_readme_focal_snippet_works_and_exposes_the_objective():
    loss_fn = create_loss_function({"type": "focal", "params": {"gamma": 2.0}})
    logits, labels = _inputs()
    assert isinstance(loss_fn, LossFunction) and callable(loss_fn)
    assert loss_fn.objective == Objective(ce_weight=0.0, focal_weight=1.0, focal_gamma=2.0)
    assert math.isfinite(loss_fn(logits.float(), labels).item())


def test_labels_are_not_shifted():
    logits, labels = _inputs(seed=1)
    ours = create_loss_function()(logits.float(), labels)
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    aligned = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))
    assert abs(ours.item() - aligned.item()) <= 1e-6 * aligned.item()
    assert abs(ours.item() - shifted.item()) > 1e-3


def test_all_ignored_is_zero_with_zero_gradient():
    logits = torch.randn(4, 6, VOCAB, requires_grad=True)
    loss = create_loss_function({"type": "focal"})(logits, torch.full((4, 6), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_at_most_one_chunk_of_logits_is_upcast_at_a_time(monkeypatch):
    seen = []
    original = Objective.loss_and_grad

    def spy(self, logits, target, need_grad):
        seen.append((tuple(logits.shape), logits.dtype))
        return original(self, logits, target, need_grad)

    monkeypatch.setattr(Objective, "loss_and_grad", spy)
    logits, labels = _inputs(shape=(4, 50))
    create_loss_function(chunk_size=16)(logits.bfloat16().requires_grad_(), labels).backward()
    assert seen and all(rows <= 16 and vocab == VOCAB and dtype == torch.float32 for (rows, vocab), dtype in seen)
    assert sum(rows for (rows, _), _ in seen) == int((labels != -100).sum())


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"smoothing": 0.2}, {"label_smoothing": 0.2}),
        ({"label_smoothing": 0.2}, {"label_smoothing": 0.2}),
        ({"epsilon": 0.2}, {"label_smoothing": 0.2}),
        ({"gamma": 3.0}, {"focal_gamma": 3.0}),
        ({"focal_gamma": 3.0}, {"focal_gamma": 3.0}),
    ],
)
def test_parameter_spellings(params, expected):
    objective = create_loss_function({"type": "multi_objective", "params": {"focal_weight": 1, **params}}).objective
    for name, value in expected.items():
        assert getattr(objective, name) == value


def test_unknown_and_conflicting_params_are_one_line_errors():
    with pytest.raises(ValueError) as err:
        create_loss_function({"type": "focal", "params": {"alpha": 0.25}})
    message = str(err.value)
    assert "\n" not in message and "unknown params ['alpha']" in message
    assert "smoothing" in message and "label_smoothing" in message and "gamma" in message
    with pytest.raises(ValueError, match="smoothing=0.1 and label_smoothing=0.2 disagree"):
        create_loss_function({"type": "label_smoothing", "params": {"smoothing": 0.1, "label_smoothing": 0.2}})


def test_model_accepts_the_callable_and_the_old_spec():
    from moai_llm import MoaiForCausalLM

    from .conftest import tiny_config

    spec = SPECS["multi_objective"]
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(loss_config=spec))
    ids = torch.randint(3, 128, (2, 12))
    fused = model(ids, labels=ids).loss
    logits = model(ids).logits
    manual = create_loss_function(spec)(logits[:, :-1], ids[:, 1:])
    assert torch.allclose(fused, manual, rtol=1e-5)
