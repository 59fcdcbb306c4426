"""The losses: parity with torch, numerical stability, auto weights, config errors, gradients."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from transformer_cli.errors import TformerError
from transformer_cli.losses import LOSSES, LossContext, LossValue, build_loss
from transformer_cli.losses.base import TARGET_KINDS
from transformer_cli.losses.bce import BCEConfig
from transformer_cli.losses.cross_entropy import CrossEntropyConfig
from transformer_cli.losses.focal import FocalConfig
from transformer_cli.losses.regression import (
    HuberConfig,
    L1Config,
    LogCoshConfig,
    MSEConfig,
    SmoothL1Config,
)

C = 4  # classes in the index-target tests
COUNTS = torch.tensor([10.0, 30.0, 0.0, 60.0])  # (C,) training examples per class; class 2 unseen


def index_batch(n: int = 9, dtype: torch.dtype = torch.float64, ignore: bool = True) -> tuple[Tensor, Tensor]:
    """Random (n, C) logits and (n,) targets, a couple of them ignored."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, C, generator=g, dtype=dtype) * 3  # (n, C)
    targets = torch.randint(0, C, (n,), generator=g)  # (n,)
    if ignore:
        targets[[1, 4]] = -100
    return logits, targets


def ctx_index() -> LossContext:
    """A C-class task with training counts."""
    return LossContext(num_outputs=C, label_counts=COUNTS)


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    """assert_close without the dtype check (loss values are compared across float32/float64)."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, check_dtype=False)


def log_softmax_by_hand(logits: Tensor) -> Tensor:
    """(N, C) float64 log-probabilities via a hand-written logsumexp: an independent reference."""
    x = logits.double()
    m = x.max(dim=1, keepdim=True).values  # (N, 1)
    return x - (m + (x - m).exp().sum(dim=1, keepdim=True).log())  # (N, C)


# ---------------------------------------------------------------------------- the table itself


def test_every_entry_is_well_formed() -> None:
    for name, spec in LOSSES.items():
        assert is_dataclass(spec.schema)
        first = fields(spec.schema)[0]
        assert first.name == "name" and spec.schema().name == name
        assert spec.targets and set(spec.targets) <= set(TARGET_KINDS)
        assert spec.summary and "\n" not in spec.summary


def test_targets_per_loss() -> None:
    kinds = {name: spec.targets for name, spec in LOSSES.items()}
    assert kinds == {
        "ce": ("index", "span"), "focal": ("index",), "bce": ("binary", "multilabel"),
        "mse": ("real",), "l1": ("real",), "huber": ("real",), "smooth_l1": ("real",), "log_cosh": ("real",),
    }


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(TformerError) as err:
        build_loss(OmegaConf.create({"name": "crossentropy"}), ctx_index())
    assert "crossentropy" in str(err.value)
    for name in LOSSES:
        assert name in str(err.value)


def test_build_loss_accepts_a_dictconfig() -> None:
    cfg = OmegaConf.structured(CrossEntropyConfig(class_weights=[1.0, 2.0, 0.5, 1.0]))
    logits, targets = index_batch()
    value = build_loss(cfg, ctx_index())(logits, targets)
    close(value.mean, F.cross_entropy(logits, targets, weight=torch.tensor([1.0, 2.0, 0.5, 1.0]).double()))


# ---------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0, 3.0], "auto"])
@pytest.mark.parametrize("ignore", [False, True])
def test_ce_matches_torch(smoothing: float, weights: Any, ignore: bool) -> None:
    logits, targets = index_batch(ignore=ignore)
    loss = build_loss(CrossEntropyConfig(label_smoothing=smoothing, class_weights=weights), ctx_index())
    value = loss(logits, targets)
    w = None if weights is None else loss.class_weights.double()
    expected = F.cross_entropy(logits, targets, weight=w, label_smoothing=smoothing)
    close(value.mean, expected)
    kept = targets[targets != -100]
    close(value.weight, torch.tensor(float(len(kept))) if w is None else w[kept].sum())


def test_ce_other_ignore_index_and_sequence_shape() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, C, 5, generator=g, dtype=torch.float64)  # (B, C, T)
    targets = torch.randint(0, C, (2, 5), generator=g)  # (B, T)
    targets[0, :2] = 3  # class 3 doubles as the ignore value here
    loss = build_loss(CrossEntropyConfig(ignore_index=3, label_smoothing=0.1, class_weights=[1, 2, 3, 4]), ctx_index())
    expected = F.cross_entropy(
        logits, targets, ignore_index=3, label_smoothing=0.1, weight=torch.tensor([1.0, 2, 3, 4]).double()
    )
    close(loss(logits, targets).mean, expected)


@pytest.mark.parametrize("name", ["ce", "focal"])
def test_all_ignored_gives_zero_not_nan(name: str) -> None:
    logits = torch.randn(3, C, requires_grad=True)
    targets = torch.full((3,), -100)
    schema = LOSSES[name].schema
    for weights in (None, [1.0, 2.0, 3.0, 4.0]):
        kwargs = {"class_weights": weights} if name == "ce" else {"alpha": weights}
        value = build_loss(schema(**kwargs), ctx_index())(logits, targets)
        assert value.total.item() == 0.0 and value.weight.item() == 0.0
        assert value.mean.item() == 0.0
        (grad,) = torch.autograd.grad(value.mean, logits)
        assert torch.isfinite(grad).all()


def test_balanced_weights_from_counts() -> None:
    loss = build_loss(CrossEntropyConfig(class_weights="auto"), ctx_index())
    n = 100.0  # N = 10 + 30 + 0 + 60
    expected = torch.tensor([n / (C * 10), n / (C * 30), 0.0, n / (C * 60)])
    close(loss.class_weights, expected, rtol=1e-6)


def test_ce_float32_extreme_logits_match_float64_reference() -> None:
    logits = torch.tensor(
        [[1e4, -1e4, 0.0, 5.0], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, -1e4, 3.0], [-1e4, 2.0, 1e4, 0.0]],
        requires_grad=True,
    )  # (4, C) float32
    targets = torch.tensor([1, 2, 0, 3])
    value = build_loss(CrossEntropyConfig(label_smoothing=0.1), ctx_index())(logits, targets)
    logp = log_softmax_by_hand(logits.detach())  # (4, C) float64
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    expected = (0.9 * nll - 0.1 / C * logp.sum(1)).mean()
    assert torch.isfinite(value.total)
    close(value.mean, expected, rtol=1e-6, atol=1e-4)
    (grad,) = torch.autograd.grad(value.mean, logits)
    assert torch.isfinite(grad).all()


# ---------------------------------------------------------------------------- focal


def test_focal_gamma_zero_equals_ce() -> None:
    logits, targets = index_batch()
    focal = build_loss(FocalConfig(gamma=0.0), ctx_index())(logits, targets)
    close(focal.mean, F.cross_entropy(logits, targets), rtol=1e-14, atol=0)
    for alpha in ([0.5, 2.0, 1.0, 3.0], "auto"):
        focal = build_loss(FocalConfig(gamma=0.0, alpha=alpha), ctx_index())(logits, targets)
        ce = build_loss(CrossEntropyConfig(class_weights=alpha), ctx_index())(logits, targets)
        close(focal.mean, ce.mean, rtol=1e-14, atol=0)
        close(focal.weight, ce.weight, rtol=1e-14, atol=0)


def test_focal_hand_computed() -> None:
    # Row 0: logits (0, 0), target 0 -> p = 1/2; row 1: logits (ln 3, 0), target 0 -> p = 3/4;
    # row 2: same logits, target 1 -> p = 1/4. Alpha weights 0.25 (class 0) and 0.75 (class 1).
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    targets = torch.tensor([0, 0, 1])
    ctx = LossContext(num_outputs=2)
    items = [0.25 * math.log(2.0), (1 / 16) * math.log(4 / 3), (9 / 16) * math.log(4.0)]  # (1-p)^2 (-ln p)
    value = build_loss(FocalConfig(gamma=2.0), ctx)(logits, targets)
    close(value.total, torch.tensor(sum(items), dtype=torch.float64))
    close(value.weight, torch.tensor(3.0))
    value = build_loss(FocalConfig(gamma=2.0, alpha=[0.25, 0.75]), ctx)(logits, targets)
    close(value.total, torch.tensor(0.25 * items[0] + 0.25 * items[1] + 0.75 * items[2], dtype=torch.float64))
    close(value.weight, torch.tensor(0.25 + 0.25 + 0.75))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_float32_extreme_logits(gamma: float) -> None:
    logits = torch.tensor(
        [[1e4, -1e4, 0.0, 5.0], [1e4, -1e4, 0.0, 5.0], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, -1e4, 3.0]],
        requires_grad=True,
    )  # (4, C) float32; row 0 saturated on its target, where (1-p)^gamma has an infinite slope
    targets = torch.tensor([0, 1, 2, 0])
    value = build_loss(FocalConfig(gamma=gamma, alpha=[1.0, 2.0, 0.5, 1.0]), ctx_index())(logits, targets)
    logp = log_softmax_by_hand(logits.detach()).gather(1, targets[:, None]).squeeze(1)  # (4,) float64
    alpha = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)[targets]
    expected = (-alpha * (-torch.expm1(logp)) ** gamma * logp).sum() / alpha.sum()
    close(value.mean, expected, rtol=1e-6, atol=1e-4)
    (grad,) = torch.autograd.grad(value.mean, logits)
    assert torch.isfinite(grad).all()


def test_focal_small_gamma_gradient_finite_at_saturation() -> None:
    logits = torch.tensor([[30.0, 0.0], [200.0, -200.0]], requires_grad=True)  # p_y rounds to 1 in float32
    value = build_loss(FocalConfig(gamma=0.3), LossContext(num_outputs=2))(logits, torch.tensor([0, 0]))
    (grad,) = torch.autograd.grad(value.mean, logits)
    assert torch.isfinite(value.total) and torch.isfinite(grad).all()


# ---------------------------------------------------------------------------- bce


def bce_by_hand(x: Tensor, y: Tensor, pos_weight: Tensor | float = 1.0) -> Tensor:
    """Float64 element-wise BCE on logits: (1-y) x + (1 + (pw-1) y) softplus(-x), softplus written out."""
    x, y = x.double(), y.double()
    softplus_neg = torch.log1p(torch.exp(-x.abs())) + (-x).clamp_min(0)
    return (1 - y) * x + (1 + (pos_weight - 1) * y) * softplus_neg


@pytest.mark.parametrize("pos_weight", [None, 2.5, [0.5, 1.0, 4.0], "auto"])
def test_bce_multilabel_matches_torch(pos_weight: Any) -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 3, generator=g, dtype=torch.float64)  # (N, L)
    targets = (torch.rand(6, 3, generator=g) > 0.5).double()  # (N, L)
    ctx = LossContext(num_outputs=3, label_counts=torch.tensor([25, 0, 80]), num_examples=100)
    loss = build_loss(BCEConfig(pos_weight=pos_weight), ctx)
    pw = None if loss.pos_weight is None else loss.pos_weight.double()
    value = loss(logits, targets)
    close(value.mean, F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw))
    close(value.weight, torch.tensor(18.0))


@pytest.mark.parametrize("pos_weight", [None, 3.0, [3.0], "auto"])
def test_bce_binary_matches_torch(pos_weight: Any) -> None:
    logits = torch.tensor([-2.0, 0.5, 3.0, 0.0], dtype=torch.float64)  # (N,)
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    ctx = LossContext(num_outputs=1, label_counts=torch.tensor([90, 10]))
    loss = build_loss(BCEConfig(pos_weight=pos_weight), ctx)
    pw = None if loss.pos_weight is None else loss.pos_weight.double()
    close(loss(logits, targets).mean, F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw))


def test_bce_auto_pos_weight_from_counts() -> None:
    binary = build_loss(BCEConfig(pos_weight="auto"), LossContext(num_outputs=1, label_counts=torch.tensor([90, 10])))
    close(binary.pos_weight, torch.tensor(9.0))
    ctx = LossContext(num_outputs=4, label_counts=torch.tensor([25, 0, 100, 50]), num_examples=100)
    multi = build_loss(BCEConfig(pos_weight="auto"), ctx)
    # 75/25; no positives -> 1.0; no negatives -> 1.0; 50/50
    close(multi.pos_weight, torch.tensor([3.0, 1.0, 1.0, 1.0]))


def test_bce_float32_extreme_logits() -> None:
    logits = torch.tensor([[1e4, -1e4, 1e4], [-1e4, 0.0, 1e4]], requires_grad=True)  # (N, L) float32
    targets = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    pos_weight = [1.0, 2.0, 0.5]
    value = build_loss(BCEConfig(pos_weight=pos_weight), LossContext(num_outputs=3))(logits, targets)
    items = bce_by_hand(logits.detach(), targets, torch.tensor(pos_weight, dtype=torch.float64))  # (N, L)
    assert items[0, 0].item() == 1e4  # logit +1e4 with target 0 costs 1e4, not inf
    close(value.total, items.sum(), rtol=1e-6, atol=1e-3)
    close(value.mean, items.mean(), rtol=1e-6, atol=1e-4)
    (grad,) = torch.autograd.grad(value.mean, logits)
    assert torch.isfinite(grad).all()


def test_bce_single_logit_extreme() -> None:
    value = build_loss(BCEConfig(), LossContext(num_outputs=1))(torch.tensor([1e4]), torch.tensor([0.0]))
    assert value.total.item() == pytest.approx(1e4)


# ---------------------------------------------------------------------------- regression


REGRESSION = [
    (MSEConfig(), lambda o, t: F.mse_loss(o, t)),
    (L1Config(), lambda o, t: F.l1_loss(o, t)),
    (HuberConfig(), lambda o, t: F.huber_loss(o, t)),
    (HuberConfig(delta=0.3), lambda o, t: F.huber_loss(o, t, delta=0.3)),
    (SmoothL1Config(), lambda o, t: F.smooth_l1_loss(o, t)),
    (SmoothL1Config(beta=0.3), lambda o, t: F.smooth_l1_loss(o, t, beta=0.3)),
    (LogCoshConfig(), lambda o, t: torch.log(torch.cosh(o - t)).mean()),  # fine for small residuals
]


@pytest.mark.parametrize("cfg,reference", REGRESSION, ids=lambda x: getattr(x, "name", ""))
@pytest.mark.parametrize("shape", [(7,), (5, 3)])
def test_regression_matches_torch(cfg: Any, reference: Any, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(3)
    outputs = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    targets = torch.randn(shape, generator=g, dtype=torch.float64)
    value = build_loss(cfg, LossContext(num_outputs=shape[-1] if len(shape) > 1 else 1))(outputs, targets)
    close(value.mean, reference(outputs, targets))
    close(value.weight, torch.tensor(float(outputs.numel())))


def test_log_cosh_large_residual_float32() -> None:
    outputs = torch.tensor([1e4, -1e4, 0.5, 1e-3], requires_grad=True)  # float32; cosh(1e4) overflows
    targets = torch.zeros(4)
    value = build_loss(LogCoshConfig(), LossContext(num_outputs=1))(outputs, targets)
    x = outputs.detach().double()
    # float64 reference by a different route: log cosh x = log((e^x + e^-x) / 2), scaled by e^-|x|.
    expected = (x.abs() + torch.log((1 + torch.exp(-2 * x.abs())) / 2)).mean()
    close(value.mean, expected, rtol=1e-6, atol=1e-4)
    (grad,) = torch.autograd.grad(value.total, outputs)
    close(grad, torch.tanh(x), rtol=1e-5, atol=1e-6)


def test_regression_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        build_loss(MSEConfig(), LossContext(num_outputs=1))(torch.zeros(4, 1), torch.zeros(4))


# ---------------------------------------------------------------------------- bad configs


BAD_CONFIGS = [
    (CrossEntropyConfig(class_weights=[1.0, 2.0, 3.0]), "loss.class_weights has 3 values but the task has 4 classes"),
    (CrossEntropyConfig(class_weights=[1.0, -2.0, 3.0, 1.0]), "loss.class_weights"),
    (CrossEntropyConfig(class_weights=[0.0, 0.0, 0.0, 0.0]), "loss.class_weights"),
    (CrossEntropyConfig(class_weights="balanced"), "loss.class_weights"),
    (CrossEntropyConfig(class_weights=2.0), "loss.class_weights"),
    (CrossEntropyConfig(class_weights=[1.0, "x", 1.0, 1.0]), "loss.class_weights"),
    (CrossEntropyConfig(label_smoothing=1.0), "loss.label_smoothing"),
    (CrossEntropyConfig(label_smoothing=-0.1), "loss.label_smoothing"),
    (FocalConfig(gamma=-1.0), "loss.gamma"),
    (FocalConfig(gamma=float("nan")), "loss.gamma"),
    (FocalConfig(alpha=[1.0, 2.0]), "loss.alpha has 2 values"),
    (FocalConfig(alpha=[1.0, float("inf"), 1.0, 1.0]), "loss.alpha"),
    (BCEConfig(pos_weight=[1.0, 2.0]), "loss.pos_weight has 2 values but the task has 4 labels"),
    (BCEConfig(pos_weight=-1.0), "loss.pos_weight"),
    (BCEConfig(pos_weight="yes"), "loss.pos_weight"),
    (HuberConfig(delta=0.0), "loss.delta"),
    (HuberConfig(delta=-1.0), "loss.delta"),
    (SmoothL1Config(beta=0.0), "loss.beta"),
]


@pytest.mark.parametrize("cfg,message", BAD_CONFIGS, ids=[str(i) for i in range(len(BAD_CONFIGS))])
def test_bad_config_names_the_field(cfg: Any, message: str) -> None:
    with pytest.raises(TformerError, match=message):
        build_loss(cfg, LossContext(num_outputs=C, label_counts=COUNTS, num_examples=100))


@pytest.mark.parametrize(
    "cfg,field",
    [(CrossEntropyConfig(class_weights="auto"), "loss.class_weights"), (FocalConfig(alpha="auto"), "loss.alpha"),
     (BCEConfig(pos_weight="auto"), "loss.pos_weight")],
)
def test_auto_without_counts_names_the_field(cfg: Any, field: str) -> None:
    with pytest.raises(TformerError, match=field):
        build_loss(cfg, LossContext(num_outputs=C))


def test_auto_with_counts_of_the_wrong_length() -> None:
    with pytest.raises(TformerError, match="loss.class_weights"):
        build_loss(CrossEntropyConfig(class_weights="auto"), LossContext(num_outputs=3, label_counts=COUNTS))
    with pytest.raises(TformerError, match="loss.pos_weight"):
        build_loss(BCEConfig(pos_weight="auto"), LossContext(num_outputs=3, label_counts=COUNTS, num_examples=100))


# ---------------------------------------------------------------------------- gradients


def gradcheck_inputs(name: str) -> tuple[Tensor, Tensor, LossContext]:
    """A small float64 input for each target kind."""
    g = torch.Generator().manual_seed(4)
    if LOSSES[name].targets[0] == "index":
        return torch.randn(5, 3, generator=g, dtype=torch.float64), torch.tensor([0, 2, -100, 1, 2]), \
            LossContext(num_outputs=3, label_counts=torch.tensor([3, 5, 2]))
    if name == "bce":
        return torch.randn(4, 3, generator=g, dtype=torch.float64), (torch.rand(4, 3, generator=g) > 0.5).double(), \
            LossContext(num_outputs=3)
    # residuals kept away from the kinks of l1 / huber / smooth_l1, where gradcheck is undefined
    targets = torch.randn(4, 2, generator=g, dtype=torch.float64)
    signs = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    offsets = signs * torch.tensor([[0.3, 0.5], [1.7, 2.5], [0.2, 3.0], [0.6, 1.4]], dtype=torch.float64)
    return targets + offsets, targets, LossContext(num_outputs=2)


GRAD_CONFIGS = [
    CrossEntropyConfig(), CrossEntropyConfig(label_smoothing=0.2, class_weights="auto"),
    FocalConfig(), FocalConfig(gamma=0.5, alpha=[1.0, 0.5, 2.0]), BCEConfig(), BCEConfig(pos_weight=[1.0, 2.0, 0.5]),
    MSEConfig(), L1Config(), HuberConfig(), SmoothL1Config(beta=0.5), LogCoshConfig(),
]


@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=lambda c: c.name)
def test_gradcheck(cfg: Any) -> None:
    outputs, targets, ctx = gradcheck_inputs(cfg.name)
    loss = build_loss(cfg, ctx)
    outputs.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda o: loss(o, targets).mean, (outputs,))


def test_every_loss_has_a_gradcheck() -> None:
    assert {cfg.name for cfg in GRAD_CONFIGS} == set(LOSSES)


def test_loss_value_is_scalar_float32_for_half_inputs() -> None:
    logits, targets = index_batch(dtype=torch.float32)
    value: LossValue = build_loss(CrossEntropyConfig(), ctx_index())(logits.bfloat16(), targets)
    assert value.total.shape == () and value.total.dtype == torch.float32
    assert value.weight.shape == () and value.weight.dtype == torch.float32
