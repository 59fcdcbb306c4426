"""The encoder: shapes, padding invariance, parity with reference attention and torch's layer, init, gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_cli.config import ModelConfig
from transformer_cli.heads import SequenceHead
from transformer_cli.model import (
    Dropout,
    Encoder,
    EncoderLayer,
    SelfAttention,
    SequenceModel,
    attention,
    count_parameters,
    dropout,
    keep_mask,
    sinusoidal_table,
)

V = 50  # vocabulary size of the tiny models
C = 3  # head outputs


def tiny_config(**overrides: object) -> ModelConfig:
    """A model small enough to run in milliseconds."""
    base = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.1, max_positions=32)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_model(cfg: ModelConfig, pooling: str = "mean", num_outputs: int = C, squeeze: bool = False,
               seed: int = 0) -> SequenceModel:
    """An encoder with a sequence head, seeded."""
    torch.manual_seed(seed)
    return SequenceModel(Encoder(V, cfg), SequenceHead(cfg.d_model, num_outputs, pooling, 0.1, squeeze))


def random_ids(n: int, seed: int) -> Tensor:
    """(n,) real token ids, never the padding id 0."""
    return torch.randint(1, V, (n,), generator=torch.Generator().manual_seed(seed))


def mask_of(lengths: list[int], T: int) -> Tensor:
    """(B, T) boolean mask, True on the first `length` tokens of each row."""
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


# ---------------------------------------------------------------- shapes


def test_encoder_output_shape() -> None:
    """Hidden states are (B, T, D)."""
    cfg = tiny_config()
    enc = Encoder(V, cfg).eval()
    ids = torch.randint(1, V, (4, 7))
    assert enc(ids, mask_of([7, 5, 3, 1], 7)).shape == (4, 7, cfg.d_model)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sequence_model_output_shapes(pooling: str) -> None:
    """A sequence head gives (B, C), or (B,) when it squeezes a single output."""
    cfg = tiny_config()
    ids, mask = torch.randint(1, V, (4, 7)), mask_of([7, 5, 3, 1], 7)
    assert tiny_model(cfg, pooling).eval()(ids, mask).shape == (4, C)
    assert tiny_model(cfg, pooling, num_outputs=1, squeeze=True).eval()(ids, mask).shape == (4,)
    assert tiny_model(cfg, pooling, num_outputs=1, squeeze=False).eval()(ids, mask).shape == (4, 1)


# ---------------------------------------------------------------- padding invariance

COMBOS = list(itertools.product(["pre", "post"], ["sinusoidal", "learned"], ["cls", "mean"]))


@pytest.mark.parametrize("norm,positional,pooling", COMBOS)
def test_padding_invariance(norm: str, positional: str, pooling: str) -> None:
    """An example's real-token states and output do not depend on batch padding or the junk in it."""
    cfg = tiny_config(norm=norm, positional=positional)
    model = tiny_model(cfg, pooling).eval()
    short, long = random_ids(5, seed=1), random_ids(11, seed=2)
    with torch.no_grad():
        alone_hidden = model.encoder(short[None], torch.ones(1, 5, dtype=torch.bool))[0]  # (5, D)
        alone_out = model(short[None], torch.ones(1, 5, dtype=torch.bool))[0]  # (C,)
        mask = mask_of([5, 11], 11)
        for junk_seed, row in itertools.product([None, 3, 4], [0, 1]):
            # Padding is the pad id, or random junk ids that a buggy model would leak into real tokens.
            pad = torch.zeros(6, dtype=torch.long) if junk_seed is None else random_ids(6, junk_seed)
            rows = [torch.cat([short, pad]), long]
            ids = torch.stack(rows if row == 0 else rows[::-1])  # (2, 11)
            m = mask if row == 0 else mask.flip(0)
            hidden = model.encoder(ids, m)[row, :5]
            out = model(ids, m)[row]
            torch.testing.assert_close(hidden, alone_hidden, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out, alone_out, atol=1e-5, rtol=1e-5)


def test_padding_invariance_of_longer_example() -> None:
    """The longest example in a batch is unaffected by the shorter ones beside it."""
    model = tiny_model(tiny_config()).eval()
    short, long = random_ids(3, seed=5), random_ids(9, seed=6)
    with torch.no_grad():
        alone = model(long[None], torch.ones(1, 9, dtype=torch.bool))[0]
        ids = torch.stack([long, torch.cat([short, random_ids(6, seed=7)])])
        together = model(ids, mask_of([9, 3], 9))[0]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- parity


def reference_attention(attn: SelfAttention, x: Tensor, mask: Tensor) -> Tensor:
    """Textbook multi-head attention with the module's own weights: (B, T, D) -> (B, T, D)."""
    B, T, D = x.shape
    H = attn.n_heads
    hs = D // H
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(D, dim=-1)  # 3 x (B, T, D)
    q, k, v = (t.view(B, T, H, hs).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hs)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, H, T, T)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    y = scores.softmax(-1) @ v  # (B, H, T, hs)
    y = y.transpose(1, 2).reshape(B, T, D)  # heads merged
    return y @ attn.out.weight.T + attn.out.bias


@pytest.mark.parametrize("n_heads", [1, 4])
def test_attention_matches_reference(n_heads: int) -> None:
    """SelfAttention equals hand-written masked softmax attention, in float64."""
    torch.manual_seed(0)
    attn = SelfAttention(tiny_config(n_heads=n_heads)).double().eval()
    for p in attn.parameters():  # larger weights than the init, so attention is far from uniform
        nn.init.normal_(p, std=0.5)
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    mask = mask_of([6, 4, 1], 6)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask), reference_attention(attn, x, mask), atol=1e-10, rtol=1e-10)


def torch_layer_like(layer: EncoderLayer, cfg: ModelConfig) -> nn.TransformerEncoderLayer:
    """A torch.nn.TransformerEncoderLayer holding a copy of `layer`'s weights."""
    ref = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, dropout=0.0, activation=cfg.activation,
                                     batch_first=True, norm_first=cfg.norm == "pre")
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(layer.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(layer.attn.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(layer.attn.out.weight)
        ref.self_attn.out_proj.bias.copy_(layer.attn.out.bias)
        ref.linear1.weight.copy_(layer.ff.up.weight)
        ref.linear1.bias.copy_(layer.ff.up.bias)
        ref.linear2.weight.copy_(layer.ff.down.weight)
        ref.linear2.bias.copy_(layer.ff.down.bias)
        for ours, theirs in ((layer.norm1, ref.norm1), (layer.norm2, ref.norm2)):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
    return ref


@pytest.mark.parametrize("norm,activation", list(itertools.product(["pre", "post"], ["gelu", "relu"])))
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_encoder_layer_matches_torch(norm: str, activation: str, grad: bool) -> None:
    """EncoderLayer equals torch's TransformerEncoderLayer with the same weights, on real tokens."""
    cfg = tiny_config(norm=norm, activation=activation, dropout=0.0, n_heads=4)
    torch.manual_seed(0)
    layer = EncoderLayer(cfg).eval()
    for p in layer.parameters():  # non-trivial norms and biases too
        nn.init.normal_(p, mean=0.0, std=0.3)
    ref = torch_layer_like(layer, cfg).eval()
    x = torch.randn(3, 7, cfg.d_model)
    mask = mask_of([7, 4, 2], 7)
    with torch.set_grad_enabled(grad):  # no_grad lets torch take its fused fast path
        ours = layer(x, mask)
        theirs = ref(x, src_key_padding_mask=~mask)
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- positions, init, counts


@pytest.mark.parametrize("d_model", [16, 7])
def test_sinusoidal_table_formula(d_model: int) -> None:
    """PE(p, 2i) = sin(p / 10000^(2i/D)) and PE(p, 2i+1) = cos(p / 10000^(2i/D))."""
    table = sinusoidal_table(64, d_model)
    assert table.shape == (64, d_model)
    for p in (0, 1, 5, 63):
        for j in range(d_model):
            angle = p / 10000 ** (2 * (j // 2) / d_model)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert table[p, j].item() == pytest.approx(expected, abs=1e-5), (p, j)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_init_zeroes_padding_embedding(positional: str) -> None:
    """The padding row of the token embedding is zero after init; other rows are not."""
    enc = Encoder(V, tiny_config(positional=positional))
    w = enc.embed.tokens.weight
    assert torch.count_nonzero(w[0]) == 0
    assert torch.count_nonzero(w[1:]) == w[1:].numel()


@pytest.mark.parametrize("norm,positional", list(itertools.product(["pre", "post"], ["sinusoidal", "learned"])))
def test_count_parameters(norm: str, positional: str) -> None:
    """count_parameters equals the sum worked out by hand from the sizes."""
    D, L, Fd, P = 8, 3, 24, 20
    cfg = tiny_config(d_model=D, n_layers=L, d_ff=Fd, max_positions=P, norm=norm, positional=positional)
    model = tiny_model(cfg, num_outputs=C)
    embeddings = V * D + (P * D if positional == "learned" else 0)
    per_layer = (D * 3 * D + 3 * D) + (D * D + D) + (D * Fd + Fd) + (Fd * D + D) + 2 * (2 * D)
    final_norm = 2 * D if norm == "pre" else 0
    head = (D * D + D) + (D * C + C)
    assert count_parameters(model) == embeddings + L * per_layer + final_norm + head
    model.head.proj.weight.requires_grad_(False)  # frozen parameters are not counted
    assert count_parameters(model) == embeddings + L * per_layer + final_norm + head - D * C


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("positional,norm,pooling", list(itertools.product(
    ["sinusoidal", "learned"], ["pre", "post"], ["cls", "mean"])))
def test_gradient_reaches_every_parameter(positional: str, norm: str, pooling: str) -> None:
    """A backward of the output sum gives every parameter a non-zero gradient (nothing unused)."""
    model = tiny_model(tiny_config(positional=positional, norm=norm), pooling).train()
    ids = torch.randint(1, V, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = mask_of([6, 4, 2], 6)
    ids[~mask] = 0
    model(ids, mask).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    assert torch.count_nonzero(model.encoder.embed.tokens.weight.grad[0]) == 0  # the padding row stays put


# ---------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_1_minus_p_scaled_and_routes_gradients_through_the_mask(p: float) -> None:
    """The CPU dropout zeroes a p share (p rounded to 2^-16), scales the rest so the expectation is exact, and
    backpropagates through the same mask."""
    torch.manual_seed(0)
    x = torch.ones(200_001, requires_grad=True)  # not a multiple of the four elements one draw serves
    y = Dropout(p).train()(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    rounded = round(p * 65536) / 65536
    assert abs(rounded - p) <= 2**-17 and torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - rounded)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())
    assert torch.equal(Dropout(p).eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_equals_the_input_times_the_seeded_mask_times_the_scale(dtype: torch.dtype) -> None:
    """dropout(x) is x * keep * scale with keep_mask's mask of the same seed, bit for bit, values and gradients
    (float32 multiplies by one float mask; half precision keeps the scale out of the mask, where it would round)."""
    x = torch.randn(3, 7, 33).to(dtype).requires_grad_(True)
    torch.manual_seed(5)
    y = dropout(x, 0.1)
    torch.manual_seed(5)
    keep, scale = keep_mask(x.shape, 0.1)
    reference = x.detach() * keep * scale
    assert y.dtype == dtype and torch.equal(y, reference)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.ones_like(x) * keep * scale)


def test_keep_mask_bits_are_uniform_and_independent_across_the_four_of_a_draw() -> None:
    """Each of the four elements one 64-bit draw serves is kept at the same rate, and neighbours independently."""
    torch.manual_seed(0)
    keep, scale = keep_mask(torch.Size([4_000_000]), 0.1)
    lanes = keep.view(-1, 4).float()  # (draws, 4)
    assert torch.allclose(lanes.mean(0), torch.full((4,), 0.9), atol=0.002)
    both = (lanes[:, 0] * lanes[:, 1]).mean()
    assert abs(both.item() - 0.81) < 0.002  # P(kept and kept) of two elements of one draw
    assert scale == 65536 / (65536 - 6554)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_dropout_is_sdpa_with_the_dropped_weights(causal: bool) -> None:
    """On CPU with attention dropout, attention() computes SDPA's function: with nothing dropped it equals SDPA
    (masked or causal); with p = 0.5 it equals the softmax weights times the keep_mask drawn from the same seed."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)  # (B, H, T, hs) each
    mask = None if causal else torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, None, :]
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    assert torch.allclose(attention(q, k, v, mask, causal, 1e-9), sdpa, atol=1e-6)  # p rounds to 0: keeps all
    torch.manual_seed(1)
    out = attention(q, k, v, mask, causal, 0.5)
    torch.manual_seed(1)
    keep, scale = keep_mask(torch.Size([2, 4, 5, 5]), 0.5)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)  # (B, H, T, T)
    hidden = torch.ones(5, 5, dtype=torch.bool).triu(1) if causal else ~mask
    weights = scores.masked_fill(hidden, float("-inf")).softmax(-1)
    assert torch.allclose(out, (weights * keep * scale) @ v, atol=1e-6)


# ---------------------------------------------------------------- first-token shortcut, fused AdamW


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_first_token_encoder_equals_the_full_encoder(norm: str) -> None:
    """With first=1 the last layer computes only position 0: the same states and the same gradients as
    computing every position and keeping the first."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layers=3, n_heads=4, d_ff=64, dropout=0.0, norm=norm, max_positions=64)
    enc = Encoder(100, cfg)
    ids = torch.randint(1, 100, (5, 11))
    mask = torch.arange(11)[None, :] < torch.tensor([11, 7, 3, 1, 9])[:, None]  # (B, T), ragged
    ids = ids.masked_fill(~mask, 0)
    full = enc(ids, mask)[:, :1]
    first = enc(ids, mask, first=1)
    assert first.shape == (5, 1, 32)
    torch.testing.assert_close(first, full, rtol=1e-5, atol=1e-6)
    grads = []
    for out in (enc(ids, mask)[:, :1], enc(ids, mask, first=1)):
        enc.zero_grad()
        (out * torch.linspace(-1, 1, 32)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_cls_pooling_model_uses_the_shortcut_and_mean_pooling_does_not() -> None:
    """SequenceModel asks the encoder for position 0 only when the head pools the first token."""
    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0, max_positions=32)
    seen = []
    for pooling in ("cls", "mean"):
        model = SequenceModel(Encoder(50, cfg), SequenceHead(16, 3, pooling, 0.0, squeeze=False)).eval()
        model.encoder.register_forward_hook(lambda m, i, out: seen.append(out.shape[1]))
        assert model(torch.randint(1, 50, (2, 6)), torch.ones(2, 6, dtype=torch.bool)).shape == (2, 3)
    assert seen == [1, 6]
