"""Optimizers and schedules: warmup/decay shapes, Noam and inverse-sqrt, LambdaLR wiring, decay groups, errors,
fused AdamW against the default implementation."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from transformer_cli.config import ModelConfig
from transformer_cli.errors import TformerError
from transformer_cli.heads import SequenceHead
from transformer_cli.model import Encoder, SequenceModel
from transformer_cli.optim import (
    AdamWConfig,
    InverseSqrtConfig,
    NoamConfig,
    SGDConfig,
    WarmupDecayConfig,
    build_optimizer,
    build_scheduler,
    inverse_sqrt,
    noam,
    param_groups,
    schedule_fn,
    warmup_decay,
)

WARMUP, TOTAL, MIN = 10, 100, 0.1


def tiny_model() -> SequenceModel:
    """An encoder and head with every kind of parameter: embeddings, linears, norms, biases."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=8, n_layers=2, n_heads=2, d_ff=16, positional="learned", max_positions=16)
    return SequenceModel(Encoder(30, cfg), SequenceHead(8, 3, "mean", 0.0, squeeze=False))


# ---------------------------------------------------------------- warmup + decay


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_warmup_is_linear_to_one(kind: str) -> None:
    """1/warmup after no update, rising linearly to 1.0 at the end of warmup."""
    values = [warmup_decay(s, WARMUP, TOTAL, kind, MIN) for s in range(WARMUP + 1)]
    assert values[0] == pytest.approx(1 / WARMUP)
    assert values[: WARMUP] == pytest.approx([(s + 1) / WARMUP for s in range(WARMUP)])
    assert values[WARMUP - 1] == pytest.approx(1.0)
    assert values[WARMUP] == pytest.approx(1.0)  # decay starts from the peak


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decay_reaches_floor(kind: str) -> None:
    """Linear and cosine fall monotonically to min_lr_ratio at the last step and stay there."""
    values = [warmup_decay(s, WARMUP, TOTAL, kind, MIN) for s in range(WARMUP, TOTAL + 20)]
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))
    assert warmup_decay(TOTAL, WARMUP, TOTAL, kind, MIN) == pytest.approx(MIN)
    assert warmup_decay(TOTAL - 1, WARMUP, TOTAL, kind, MIN) > MIN
    assert min(values) == pytest.approx(MIN)
    assert values[-1] == pytest.approx(MIN)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decay_midpoint(kind: str) -> None:
    """Halfway through the decay both shapes sit at 0.5 * (1 + min_lr_ratio)."""
    mid = WARMUP + (TOTAL - WARMUP) // 2
    assert warmup_decay(mid, WARMUP, TOTAL, kind, MIN) == pytest.approx(0.5 * (1 + MIN))


def test_cosine_shape() -> None:
    """Cosine follows min + (1 - min) * 0.5 * (1 + cos(pi * progress))."""
    for s in range(WARMUP, TOTAL + 1, 7):
        progress = (s - WARMUP) / (TOTAL - WARMUP)
        expected = MIN + (1 - MIN) * 0.5 * (1 + math.cos(math.pi * progress))
        assert warmup_decay(s, WARMUP, TOTAL, "cosine", MIN) == pytest.approx(expected)


def test_constant_stays_at_one() -> None:
    """After warmup the constant schedule is 1.0, whatever min_lr_ratio says."""
    assert {warmup_decay(s, WARMUP, TOTAL, "constant", MIN) for s in range(WARMUP - 1, TOTAL + 5)} == {1.0}


def test_no_warmup_starts_at_peak() -> None:
    """Without warmup the first update gets the full learning rate."""
    for kind in ("constant", "linear", "cosine"):
        assert warmup_decay(0, 0, TOTAL, kind, MIN) == pytest.approx(1.0)


def test_warmup_ratio_used_when_warmup_steps_is_zero() -> None:
    """warmup_steps=0 falls back to warmup_ratio x total steps; warmup_steps > 0 wins over it."""
    f = schedule_fn(WarmupDecayConfig(name="linear", warmup_steps=0, warmup_ratio=0.1), 200)
    assert f(0) == pytest.approx(1 / 20)
    assert f(18) < 1.0
    assert f(19) == pytest.approx(1.0)
    g = schedule_fn(WarmupDecayConfig(name="linear", warmup_steps=5, warmup_ratio=0.1), 200)
    assert g(0) == pytest.approx(1 / 5)
    assert g(4) == pytest.approx(1.0)


# ---------------------------------------------------------------- noam, inverse sqrt


def test_noam_peaks_at_warmup() -> None:
    """Noam rises linearly, peaks at s == warmup at d^-0.5 w^-0.5, then decays as s^-0.5."""
    w, d = 50, 64
    values = [noam(i, w, d) for i in range(1000)]
    peak = max(range(len(values)), key=values.__getitem__)
    assert peak == w - 1  # index w - 1 is s == w, counting updates from 1
    assert values[peak] == pytest.approx(d**-0.5 * w**-0.5)
    for i in range(w - 1):
        assert values[i] == pytest.approx(d**-0.5 * (i + 1) * w**-1.5)
    for i in range(w - 1, 1000, 37):
        assert values[i] == pytest.approx(d**-0.5 * (i + 1) ** -0.5)
    assert values[4 * w - 1] == pytest.approx(values[w - 1] / 2)  # four times later, half the rate


def test_inverse_sqrt() -> None:
    """Linear warmup to 1.0 at s == warmup, then sqrt(warmup / s)."""
    w = 40
    assert inverse_sqrt(0, w) == pytest.approx(1 / w)
    assert inverse_sqrt(w - 1, w) == pytest.approx(1.0)
    assert max(inverse_sqrt(i, w) for i in range(500)) == pytest.approx(1.0)
    for s in (w + 1, 2 * w, 4 * w, 1000):
        assert inverse_sqrt(s - 1, w) == pytest.approx(math.sqrt(w / s))


# ---------------------------------------------------------------- the scheduler on a real optimizer

SCHEDULE_CONFIGS = [
    WarmupDecayConfig(name="constant", warmup_steps=3),
    WarmupDecayConfig(name="linear", warmup_steps=3, min_lr_ratio=0.2),
    WarmupDecayConfig(name="cosine", warmup_steps=0, warmup_ratio=0.25, min_lr_ratio=0.0),
    InverseSqrtConfig(warmup_steps=4),
    NoamConfig(warmup_steps=4, d_model=16),
]


@pytest.mark.parametrize("cfg", SCHEDULE_CONFIGS, ids=lambda c: c.name)
def test_scheduler_multiplies_lr(cfg: Any) -> None:
    """After k scheduler steps every group's lr is optim.lr x schedule(k)."""
    total, lr = 20, 0.3
    model = tiny_model()
    opt = build_optimizer(AdamWConfig(lr=lr), model)
    sched = build_scheduler(cfg, opt, total)
    f = schedule_fn(cfg, total)
    for k in range(total + 3):
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(lr * f(k)), k
        opt.step()
        sched.step()


def test_scheduler_rejects_bad_floor_and_unknown_name() -> None:
    """min_lr_ratio outside [0, 1] and unknown schedule names are user errors."""
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(TformerError, match="min_lr_ratio"):
        build_scheduler(WarmupDecayConfig(name="linear", min_lr_ratio=1.5), opt, 10)
    with pytest.raises(TformerError, match="unknown schedule"):
        build_scheduler(WarmupDecayConfig(name="triangle"), opt, 10)


# ---------------------------------------------------------------- parameter groups and optimizers


def test_param_groups_split() -> None:
    """Linear weights decay; biases, LayerNorm weights and embeddings do not; each parameter once."""
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.05, 1e-3)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    decay_ids, no_decay_ids = {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}
    expected_decay, expected_no_decay = set(), set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.Linear) and name == "weight":
                expected_decay.add(id(p))
            else:
                assert name == "bias" or isinstance(module, (nn.LayerNorm, nn.Embedding)), (module, name)
                expected_no_decay.add(id(p))
    assert decay_ids == expected_decay and no_decay_ids == expected_no_decay
    everything = [p for g in (decay, no_decay) for p in g["params"]]
    assert len(everything) == len(set(map(id, everything))) == len(list(model.parameters()))
    assert id(model.encoder.embed.tokens.weight) in no_decay_ids
    assert id(model.encoder.embed.positions.weight) in no_decay_ids
    assert id(model.encoder.layers[0].norm1.weight) in no_decay_ids
    assert id(model.encoder.layers[0].attn.qkv.weight) in decay_ids
    assert id(model.head.proj.weight) in decay_ids


def test_param_groups_skip_frozen() -> None:
    """Parameters that do not train are left out of both groups."""
    model = tiny_model()
    model.encoder.embed.tokens.weight.requires_grad_(False)
    model.head.dense.weight.requires_grad_(False)
    grouped = {id(p) for g in param_groups(model, 0.01, 1e-3) for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("cfg", [AdamWConfig(lr=0.002, weight_decay=0.1, betas=[0.8, 0.95]),
                                 SGDConfig(lr=0.05, weight_decay=0.1)], ids=["adamw", "sgd"])
def test_build_optimizer(cfg: Any) -> None:
    """The optimizer has the configured lr and applies weight decay only to the decay group."""
    opt = build_optimizer(cfg, tiny_model())
    assert [g["lr"] for g in opt.param_groups] == [cfg.lr, cfg.lr]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    if isinstance(cfg, AdamWConfig):
        assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.95)


@pytest.mark.parametrize("cfg", [
    AdamWConfig(lr=0.0), AdamWConfig(lr=-1e-3), SGDConfig(lr=0.0),
    AdamWConfig(betas=[0.9]), AdamWConfig(betas=[0.9, 0.99, 0.999]), AdamWConfig(name="adafactor"),
], ids=["adamw-lr0", "adamw-lr-neg", "sgd-lr0", "betas1", "betas3", "unknown"])
def test_build_optimizer_errors(cfg: Any) -> None:
    """Non-positive lr, betas that are not a pair and unknown optimizers raise TformerError."""
    with pytest.raises(TformerError):
        build_optimizer(cfg, tiny_model())


def test_fused_adamw_takes_the_same_steps_as_the_default_implementation() -> None:
    """optim.fused=true (the default) and false give the same weights after a few steps, within rounding.

    The key bias is the exception: softmax ignores it, so its true gradient is zero and it receives rounding
    noise only, which Adam normalises into steps of up to lr in either direction; it is checked to that bound."""
    from transformer_cli.optim import AdamWConfig, build_adamw

    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0, max_positions=32)
    base = SequenceModel(Encoder(50, cfg), SequenceHead(16, 3, "mean", 0.0, squeeze=False))
    models = [copy.deepcopy(base) for _ in range(2)]
    opts = [build_adamw(AdamWConfig(lr=1e-2, fused=f), m) for f, m in zip((True, False), models)]
    assert opts[0].defaults["fused"] and not opts[1].defaults["fused"]
    ids, mask = torch.randint(1, 50, (4, 7)), torch.ones(4, 7, dtype=torch.bool)
    for _ in range(5):
        for model, opt in zip(models, opts):
            model(ids, mask).square().sum().backward()
            opt.step()
            opt.zero_grad()
    key = slice(16, 32)  # the key third of the fused query/key/value bias
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        a, b = a.detach().clone(), b.detach().clone()
        if name.endswith("attn.qkv.bias"):
            assert (a[key] - b[key]).abs().max() <= 5 * 1e-2  # five steps of at most lr each
            a[key], b[key] = 0.0, 0.0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
