"""The trained-model decoding benchmark: BART carries tformer's weights exactly, both sides decode alike, and the
script's report holds together (its smoke run, which trains with the CLI, is marked slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transformer_cli.config import ModelConfig
from transformer_cli.files import read_json
from transformer_cli.model import Seq2SeqModel

pytest.importorskip("transformers")

from scripts.bench import decode  # noqa: E402

BOS, EOS = 2, 3


def bart_layout_model(eos_bias: float = 0.0) -> Seq2SeqModel:
    """A seeded tformer model in BART's layout (post-norm, learned positions, embedding LayerNorm), with
    separate source (30) and target (40) vocabularies; eos_bias > 0 makes it end its outputs early."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0, norm="post", positional="learned",
                      embed_norm=True, max_positions=64)
    model = Seq2SeqModel(30, 40, cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # trained-looking weights: no zero biases, no unit LayerNorms
            p.add_(torch.randn_like(p) * 0.1)
        model.decoder.embed.tokens.weight[EOS] += eos_bias * model.decoder.embed.tokens.weight[EOS].sign()
    return model


def batches() -> list[decode.Batch]:
    """Two batches of three sources with padding and a length limit each."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        src = torch.randint(4, 30, (3, 7), generator=g)
        mask = torch.ones(3, 7, dtype=torch.bool)
        mask[1, 5:] = False
        src[~mask] = 0
        out.append((src, mask, torch.tensor([9, 9, 9])))
    return out


def test_bart_gives_tformers_logits() -> None:
    """The mapped BART's teacher-forced logits equal tformer's (float rounding apart)."""
    model = bart_layout_model()
    bart = decode.bart_from(model, 30, 0, BOS, EOS)
    src, mask, _ = batches()[0]
    assert decode.logits_gap(model, bart, src, mask, BOS) < 1e-4
    broken = decode.bart_from(model, 30, 0, BOS, EOS)
    with torch.no_grad():
        broken.model.decoder.layers[0].fc1.weight.mul_(1.5)
    assert decode.logits_gap(model, broken, src, mask, BOS) > 1e-2  # the check sees a wrong weight


def test_both_sides_decode_alike_and_the_report_adds_up(capsys: pytest.CaptureFixture[str]) -> None:
    """On a model that ends its outputs, tformer's greedy outputs equal generate()'s, and the report's ratios
    are the rows' time ratios."""
    model = bart_layout_model(eos_bias=0.5)
    bart = decode.bart_from(model, 30, 0, BOS, EOS)
    rows = decode.rows(model, bart, BOS, EOS, beam=2, penalty=1.0)
    counter = decode.StepCounter((model.decoder, bart.model.decoder))
    seconds, outputs, work = decode.time_rows(rows, batches(), reps=2, counter=counter)
    result = decode.report(seconds, outputs, work, batches(), beam=2)
    assert 0 < result["ended_by_eos"]["tformer greedy"] < 1  # some outputs end by EOS, some at the limit
    assert result["ended_by_eos"]["tformer greedy"] == result["ended_by_eos"]["generate greedy"]
    assert result["same_output"] == {"greedy": 1.0, "beam 2": 1.0}
    assert all(len(t) == 9 for t in outputs["tformer greedy, full"])  # no token ends an output
    full = {side: result["rows"][f"{side} greedy, full"] for side in ("tformer", "generate")}
    assert full["tformer"]["decoder_steps"] == full["generate"]["decoder_steps"] == 2 * 9  # 2 batches x 9 steps
    assert full["tformer"]["row_steps"] == full["generate"]["row_steps"] == 2 * 3 * 9
    eos = {side: result["rows"][f"{side} greedy, EOS"]["row_steps"] for side in ("tformer", "generate")}
    assert eos["tformer"] < eos["generate"]  # ended outputs leave tformer's batch
    for key, ratio in result["speedup"].items():
        expected = [t / o for o, t in zip(seconds[f"tformer {key}"], seconds[f"generate {key}"])]
        assert ratio["n"] == 2 and ratio["min"] == min(expected)
    decode.print_table({"logits_gap": 0.0, **result})
    assert "beam 2 | full" in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_run(tmp_path: Path) -> None:
    """`python -m scripts.bench.decode --smoke` trains a tiny model with the CLI and writes its figures."""
    decode.main(["--smoke", "--out", str(tmp_path)])
    result = read_json(tmp_path / "decode.json")
    assert result["logits_gap"] < 1e-3
    assert set(result["speedup"]) == {"greedy, EOS", "greedy, full", "beam 4, EOS", "beam 4, full"}
