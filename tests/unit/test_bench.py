"""The benchmark script: its arithmetic and its verdicts (its smoke run: tests/e2e/test_bench.py).

scripts/ is run from the repository root, not installed: pyproject.toml's pytest `pythonpath` puts the root on
sys.path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.bench import contenders as C
from scripts.bench import hf, report, runner, what_if
from scripts.bench.contenders import EpochShape, Step
from scripts.bench.flops import ModelShape, batch_flops, step_flops
from scripts.bench.workload import (MODES, Workload, load_workload, padded_tokens, padding_fraction, representative,
                                   typical_padded_tokens)


def test_step_flops_counts_matmuls_attention_and_head() -> None:
    shape = ModelShape(d_model=4, n_layers=2, d_ff=8, n_outputs=3)
    assert shape.matmul_params == 2 * (4 * 16 + 2 * 4 * 8)
    rows = np.array([3, 5])
    expected = 6 * 256 * 8 + 12 * 2 * 4 * (9 + 25) + 6 * (16 + 12) * 2
    assert step_flops(shape, rows) == expected


def test_batch_flops_padded_counts_every_row_at_the_width() -> None:
    shape = ModelShape(8, 1, 16, 2)
    lengths = np.array([2, 7, 4])
    real, padded = batch_flops(shape, lengths, np.array([0, 2]))
    assert real == step_flops(shape, np.array([2, 4]))
    assert padded == step_flops(shape, np.array([4, 4]))
    assert batch_flops(shape, lengths, np.array([0, 2]), width=10)[1] == step_flops(shape, np.array([10, 10]))


def test_padding_fraction_and_padded_tokens() -> None:
    lengths = np.array([1, 3, 2, 2])
    batches = [np.array([0, 1]), np.array([2, 3])]
    assert padded_tokens(batches, lengths) == 2 * 3 + 2 * 2
    assert padding_fraction(batches, lengths) == pytest.approx(1 - 8 / 10)
    assert padding_fraction(batches, lengths, pad_to=4) == pytest.approx(1 - 8 / 16)


def test_typical_padded_tokens_is_the_median_full_batch() -> None:
    lengths = np.array([3, 5, 10, 10, 20, 30, 40])
    batches = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5]), np.array([6])]  # the last one is short
    assert typical_padded_tokens(batches, lengths) == 2 * 10  # of 2 x 5, 2 x 10 and 2 x 30


def test_representative_spans_the_sizes_with_full_batches_only() -> None:
    lengths = np.arange(1, 101)
    batches = [np.arange(i, i + 10) for i in range(0, 100, 10)] + [np.array([99])]
    picks = representative(batches, lengths, 3, seed=0)
    widths = sorted(int(lengths[b].max()) for b in picks)
    assert widths == [10, 50, 100] and all(len(b) == 10 for b in picks)


def test_block_figures_extrapolate_by_padded_tokens() -> None:
    steps = [Step(0.5, 80, 100, 1e9, 2e9), Step(1.5, 160, 200, 3e9, 4e9)]
    figures = runner.block_figures(steps, EpochShape(batches=30, real_tokens=2400, padded_tokens=3000),
                                   peak_gflops=10.0)
    assert figures["epoch_s"] == pytest.approx(2.0 * 3000 / 300)
    assert figures["real_tokens_per_s"] == pytest.approx(120.0)
    assert figures["mfu_real"] == pytest.approx(4e9 / 2.0 / 10e9)
    assert figures["step_ms"] == pytest.approx(1000.0)


def _fake(epoch_s: float, mfu: float) -> dict:
    reps = [{"epoch_s": epoch_s, "real_tokens_per_s": 1 / epoch_s, "mfu_real": mfu}] * 3
    return {"reps": reps, "mfu_real": {"median": mfu, "min": mfu, "max": mfu}}


def test_goals_report_met_and_missed() -> None:
    contenders = {"ours": _fake(10, 0.8), "ours_full": _fake(12, 0.6), "hf_trainer_pad": _fake(40, 0.2),
                  "hf_trainer_grouped": _fake(11, 0.55), "hf_loop_same": _fake(12, 0.5)}
    ratios = runner.ratio_table(contenders)
    padding = {"rotten_tomatoes": {"padding_fraction": {"bucketed (ours)": 0.03}, "mean_tokens": 28.0,
                                   "batch_size": 32}}
    sweep = {"one_thread_over_one_job": {"median": 0.95, "min": 0.9, "max": 1.1},
             "one_thread_over_fighting": {"median": 2.0, "min": 1.9, "max": 2.1}, "cores": 2}
    goals = {g["goal"]: g for g in report.goals({"contenders": contenders, "ratios": ratios, "padding": padding,
                                                  "sweep": sweep})}
    assert goals["epoch time vs HF classification example defaults"]["met"] is True  # 0.25 <= 1/3
    assert goals["epoch time vs HF Trainer, best settings"]["met"] is False  # 0.91 > 1/1.2
    assert goals["MFU (real tokens) vs HF plain loop, same padded shapes"]["measured"] == pytest.approx(1.2)
    assert goals["MFU (real tokens) vs HF plain loop, both padded to max_length"]["met"] is None  # not run
    assert goals["our MFU (real tokens) vs model-shape matmul peak"]["measured"] == pytest.approx(0.6)  # ours_full's
    assert goals["our MFU (real tokens) vs model-shape matmul peak"]["met"] is False
    assert goals["padding waste on rotten_tomatoes"]["met"] is True
    assert goals["padding waste on rotten_tomatoes"]["min"] is None  # not timed: no range
    assert goals["epoch time vs HF Trainer, best settings"]["min"] == pytest.approx(10 / 11)  # timed: its range
    sweep_goal = goals["parallel sweep: N jobs x 1 thread / one N-thread job at a time"]
    assert sweep_goal["measured"] == 0.95 and sweep_goal["met"] is False  # the fair baseline, not 2.0


def test_ratios_divide_times_by_the_shipped_step_and_mfu_by_the_full_one() -> None:
    figures = {"ours": _fake(10, 0.8), "ours_full": _fake(12, 0.6), "hf_loop_same": _fake(20, 0.3)}
    ratios = runner.ratio_table(figures)
    assert set(ratios) == {"ours_full", "hf_loop_same"}
    assert ratios["hf_loop_same"]["epoch_s"]["median"] == pytest.approx(0.5)  # ours / theirs
    assert ratios["hf_loop_same"]["mfu_real"]["median"] == pytest.approx(2.0)  # ours_full / theirs, not 0.8 / 0.3
    assert "mfu_real" not in ratios["ours_full"] and ratios["ours_full"]["epoch_s"]["median"] == pytest.approx(10 / 12)


def _tiny_classifier() -> torch.nn.Module:
    """tformer's own first-token classifier, two small layers."""
    from types import SimpleNamespace

    from transformer_cli.config import ModelConfig
    from transformer_cli.tasks.common import sequence_model

    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32)
    return sequence_model(cfg, 50, 3, SimpleNamespace(pooling="cls", head_dropout=0.1), squeeze=False)


@pytest.mark.parametrize("name", sorted(what_if.VARIANTS))
def test_what_if_variants_swap_modules_and_keep_the_model_callable(name: str) -> None:
    model = _tiny_classifier().train()
    what_if.apply(what_if.VARIANTS[name], model)
    optimizer = torch.optim.AdamW(model.parameters())
    assert all("forward" not in vars(m) for m in model.modules())  # no module's forward replaced
    ids, mask = torch.randint(1, 50, (2, 7)), torch.ones(2, 7, dtype=torch.bool)
    model(ids, mask).sum().backward()  # the model still calls encoder(ids, mask, first)
    optimizer.step()


def test_what_if_variants_each_undo_their_choice() -> None:
    """Each variant changes the step it is timed against: a variant equal to the shipped step measures nothing."""
    from transformer_cli.model import Dropout, FeedForward

    model = _tiny_classifier()
    assert all(m.dropout.p == 0 for m in model.modules() if isinstance(m, FeedForward))  # the shipped default
    what_if.apply(("ffn_dropout",), model)
    assert all(m.dropout.p == 0.1 for m in model.modules() if isinstance(m, FeedForward))  # the residual rate
    what_if.apply(("nn_dropout",), model)
    assert not any(isinstance(m, Dropout) for m in model.modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def _groups(optimizer: torch.optim.Optimizer) -> dict[float, set[int]]:
    """Parameter ids per weight decay, empty groups left out."""
    out: dict[float, set[int]] = {}
    for g in optimizer.param_groups:
        if g["params"]:
            out.setdefault(g["weight_decay"], set()).update(id(p) for p in g["params"])
    return out


def test_contenders_adamw_has_tformers_groups_and_the_fused_kernel() -> None:
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from transformer_cli.optim import AdamWConfig, build_optimizer

    model = _tiny_classifier()
    cfg = AdamWConfig(weight_decay=0.05)
    ours = build_optimizer(OmegaConf.structured(cfg), model)
    theirs = C.adamw_like_ours(model, OmegaConf.create(asdict(cfg)))
    assert _groups(theirs) == _groups(ours) and len(_groups(ours)) == 2
    assert theirs.defaults["fused"] and ours.defaults["fused"]
    settings = ("lr", "betas", "eps")
    assert {k: theirs.defaults[k] for k in settings} == {k: ours.defaults[k] for k in settings}


def _torch_classifier() -> C.TorchEncoderClassifier:
    """The nn.TransformerEncoder contender's model with tformer's default rates, one small layer."""
    return C.TorchEncoderClassifier(50, 16, 1, 2, 32, dropout=0.1, attn_dropout=0.0, ffn_dropout=0.0,
                                    head_dropout=0.1, max_positions=64, n_outputs=3)


def test_torch_encoder_contender_drops_out_where_tformer_does() -> None:
    from transformer_cli.config import ModelConfig
    from transformer_cli.model import EncoderLayer

    ours = EncoderLayer(ModelConfig(d_model=16, n_heads=2, d_ff=32))
    theirs = _torch_classifier().encoder.layers[0]
    assert theirs.self_attn.dropout == ours.attn.attn_dropout == 0.0  # attention weights
    assert theirs.dropout.p == ours.ff.dropout.p == 0.0  # inside the feed-forward block
    assert theirs.dropout1.p == theirs.dropout2.p == ours.dropout.p == 0.1  # residual branches
    head = _torch_classifier().head
    assert [m.p for m in head if isinstance(m, torch.nn.Dropout)] == [0.1, 0.1]  # before and after the dense layer


def test_every_contender_names_what_differs_from_our_step() -> None:
    assert all(spec.differs for spec in runner.CONTENDERS.values())
    assert "nn.Dropout" in runner.CONTENDERS["torch_encoder"].differs  # the one dropout difference left


def test_contenders_adamw_exempts_nn_multihead_attention_biases() -> None:
    model = _torch_classifier()
    decayed = C.decayed_names(model)
    assert "encoder.layers.0.self_attn.in_proj_weight" in decayed
    assert not any(n.endswith("bias") or "norm" in n or n in ("tokens.weight", "positions.weight") for n in decayed)


@pytest.fixture(scope="module")
def smoke_work() -> Workload:
    """The smoke mode's workload (200 Rotten Tomatoes texts, the tiny model)."""
    return load_workload(MODES["smoke"])


@pytest.mark.slow
def test_every_pytorch_contender_steps_with_fused_adamw_and_tformers_groups(smoke_work: Workload) -> None:
    settings = MODES["smoke"]
    loops = {"torch_encoder": C.torch_encoder(smoke_work, settings)}
    if hf.available() is None:
        loops["hf_loop"] = hf.hf_loop(smoke_work, settings, bucket=True, pad_to=None)
    for name, c in loops.items():
        assert c.optimizer.defaults["fused"], name
        assert _groups(c.optimizer).keys() == {smoke_work.cfg.optim.weight_decay, 0.0}, name
    if hf.available() is None:
        trainer = hf.trainer_classify(smoke_work, settings, grouped=True).trainer
        optimizer = trainer.create_optimizer()
        assert optimizer.defaults["fused"] and trainer.args.optim == "adamw_torch_fused"
        decayed = {id(p) for n, p in trainer.model.named_parameters() if n in C.decayed_names(trainer.model)}
        assert _groups(optimizer)[smoke_work.cfg.optim.weight_decay] == decayed


def test_full_last_layer_computes_every_position_with_the_same_outputs() -> None:
    model = _tiny_classifier().eval()
    full = C.FullLastLayer(model)
    shapes: list[tuple[int, ...]] = []
    model.encoder.layers[-1].register_forward_hook(lambda m, args, out: shapes.append(tuple(out.shape)))
    ids, mask = torch.randint(1, 50, (2, 7)), torch.ones(2, 7, dtype=torch.bool)
    torch.testing.assert_close(full(ids, mask), model(ids, mask))
    assert shapes == [(2, 7, 16), (2, 1, 16)]  # full: every position; shipped: the first token only


class _Recorder:
    """A contender that only records when its timed blocks ran."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def block(self, k: int) -> list[Step]:
        self.calls.append(self.name)
        return [Step(1.0, 1, 1, 1.0, 1.0)] * k

    def epoch(self) -> EpochShape:
        return EpochShape(1, 1, 1)

    def stress(self, n: int) -> None:
        pass


def test_contenders_run_in_a_seeded_order_shuffled_per_repetition() -> None:
    from dataclasses import replace

    calls: list[str] = []
    names = [f"c{i}" for i in range(6)]
    table = {n: runner.Spec(n, "b", False, False, lambda w, s, n=n: _Recorder(n, calls)) for n in names}
    settings = replace(MODES["smoke"], reps=7, warmup=1)
    runner.time_contenders(None, settings, names, lambda msg: None, table)
    reps = [calls[len(names) + 6 * r : len(names) + 6 * (r + 1)] for r in range(7)]  # after the warm-ups
    assert all(sorted(r) == names for r in reps)  # every contender once per repetition
    assert len({tuple(r) for r in reps}) > 1 and reps[0] != names  # shuffled, and anew per repetition
    assert reps == runner.rep_orders(names, 7, settings.seed)  # reproducible under the seed
    assert runner.rep_orders(names, 7, settings.seed + 1) != reps
    assert MODES["full"].reps >= 7


def _results() -> dict:
    """A small benchmark result built by the benchmark's own functions from made-up steps (no timing)."""
    epoch = EpochShape(batches=10, real_tokens=900, padded_tokens=1000)
    c = {}
    for name, seconds in (("ours", 1.0), ("ours_full", 1.2), ("hf_loop_same", 2.0), ("torch_encoder", 2.5)):
        blocks = [[Step(seconds * f, 90, 100, 1e9, 1.1e9)] for f in (1.0, 1.1, 0.9)]
        spec = runner.CONTENDERS[name]
        c[name] = {"who": spec.who, "batching": spec.batching, "differs": spec.differs, "mfu_peak": "length-bucketed",
                   **runner.contender_figures(blocks, epoch, 10.0)}
    results = {
        "meta": {"date": "2030-01-02T03:04:05", "mode": "full", "command": "python -m scripts.bench",
                 "cpu": "Test CPU 3000", "cpu_capability": "AVX512", "cores": 2, "torch_threads": 2,
                 "versions": {"torch": "9.9", "tformer": "1"},
                 "model_summary": "d_model 8, 1 layers, 2 heads, FFN 16", "batch_size": 4, "reps": 3,
                 "dataset": "rotten_tomatoes", "training_examples": 40},
        "mfu_peaks": {"length-bucketed": {"rows": 120, "gflops": 10.0},
                      "pad to max_length": {"rows": 512, "gflops": 12.0}},
        "matmul_peak": {"torch.mm 8x8": {"median": 5.0, "min": 4.0, "max": 6.0, "n": 2}},
        "contenders": c, "ratios": runner.ratio_table(c),
        "padding": {"rotten_tomatoes": {"examples": 40, "mean_tokens": 25.0, "max_tokens": 60, "max_length": 128,
                                        "batch_size": 4, "padding_fraction": {"bucketed (ours)": 0.02,
                                                                              "pad to max_length": 0.8}}},
        "memory": {"ours": {"peak_rss_mib": 400.0, "training_peak_rss_mib": 380.0},
                   "hf_loop_same": {"peak_rss_mib": 500.0, "training_peak_rss_mib": 450.0}},
        "full_epoch": {"ours": {"epoch_s": 11.0, "batches": 10, "real_tokens_per_s": 80.0,
                                "estimated_epoch_s": c["ours"]["epoch_s"],
                                "measured_over_estimated": {"median": 1.1, "min": 1.0, "max": 1.2, "n": 3}}},
    }
    results["goals"] = report.goals(results)
    return results


def _printed(results: dict) -> str:
    """The tables as printed, in plain text."""
    from rich.console import Console

    console = Console(record=True, width=400, file=io.StringIO())
    report.print_tables(results, console)
    return console.export_text()


def test_memory_goal_compares_ours_with_the_lowest_contender_on_our_batches() -> None:
    results = _results()
    results["memory"]["torch_encoder"] = {"peak_rss_mib": 390.0, "training_peak_rss_mib": None}
    results["memory"]["hf_trainer_pad"] = {"peak_rss_mib": 100.0, "training_peak_rss_mib": 100.0}  # other batches
    name = "peak RSS while training vs the lowest contender, same batches"
    goal = {g["goal"]: g for g in report.goals(results)}[name]
    assert goal["measured"] == pytest.approx(380.0 / 390.0) and goal["met"] is True  # torch_encoder's whole peak
    assert "nn.TransformerEncoder" in goal["detail"]
    del results["memory"]["ours"]
    assert {g["goal"]: g for g in report.goals(results)}[goal["goal"]]["met"] is None


def test_printed_table_reports_the_measured_full_epoch() -> None:
    text = _printed(_results())
    assert "epoch s (one measured)" in text and "11.0" in text
    assert "full epoch: ours" in text and "measured/estimated 1.10 (1.00-1.20)" in text


def test_sweep_headline_divides_by_one_job_with_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from scripts.bench import workers

    speed = {(1, 2): 100.0, (2, 1): 150.0, (2, 2): 50.0}  # aggregate tokens/s of (jobs, threads)
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(workers, "run_sweep", lambda s, jobs, threads: {"real_tokens_per_s": speed[jobs, threads],
                                                                       "wall_s": 1.0})
    table = workers.sweep_table(replace(MODES["smoke"], sweep_reps=3))
    assert table["baseline"] == "1 job x 2 threads" and table["reps"] == 3
    assert table["one_thread_over_one_job"]["median"] == pytest.approx(1.5)  # fair: one 2-thread job at a time
    assert table["one_thread_over_fighting"]["median"] == pytest.approx(3.0)  # oversubscribed: 4 threads, 2 cores
    assert table["rows"]["2 jobs x 1 thread"]["real_tokens_per_s"]["n"] == 3


def test_markdown_section_gives_the_machine_ranges_differences_and_verdicts() -> None:
    results = _results()
    text = report.render_markdown(results)
    assert "Test CPU 3000 (AVX512 kernels), 2 cores" in text
    assert "torch 9.9" in text and "2030-01-02T03:04:05" in text
    for c in results["contenders"].values():
        assert c["differs"] and c["differs"] in text  # every row says what differs
    assert "| what differs |" in text
    ours = results["contenders"]["ours"]["real_tokens_per_s"]
    assert f"{ours['median']:,.0f} ({ours['min']:,.0f}-{ours['max']:,.0f})" in text  # median (min-max)
    verdicts = {g["goal"]: g["met"] for g in results["goals"]}
    assert False in verdicts.values() and "**NOT met**" in text
    assert all(f"| {goal} |" in text for goal in verdicts)
    assert "smoke run" not in text  # a full run says nothing of the kind
    smoke = report.render_markdown({**results, "meta": {**results["meta"], "mode": "smoke"}})
    assert "from a smoke run" in smoke


def test_report_command_replaces_only_the_marked_section(tmp_path: Path) -> None:
    import json

    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_results()))
    page = tmp_path / "performance.md"
    page.write_text(f"# Title\n\nhand-typed text\n\n{report.BEGIN}\nold figures\n{report.END}\n\nafter\n")
    assert report.main([str(bench), "--write", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Title\n\nhand-typed text\n\n" + report.BEGIN + "\n_Generated by")
    assert text.endswith(report.END + "\n\nafter\n") and "old figures" not in text
    assert text.count(report.BEGIN) == 1 and "Test CPU 3000" in text
    page.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        report.main([str(bench), "--write", str(page)])


def test_report_command_writes_one_named_section_and_keeps_the_others(tmp_path: Path) -> None:
    """A page keeps a section per kind of machine: writing one leaves the other's figures as they were."""
    import json

    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_results()))
    page = tmp_path / "performance.md"
    (a_begin, a_end), (b_begin, b_end) = report.markers("cpu-a"), report.markers("cpu-b")
    page.write_text(f"{a_begin}\nA figures\n{a_end}\n\n{b_begin}\nB figures\n{b_end}\n")
    assert report.main([str(bench), "--write", str(page), "--section", "cpu-b"]) == 0
    text = page.read_text()
    assert text.startswith(f"{a_begin}\nA figures\n{a_end}\n\n{b_begin}\n_Generated by")
    assert "B figures" not in text and text.count("Test CPU 3000") == 1 and text.endswith(b_end + "\n")
    with pytest.raises(SystemExit, match="cpu-c"):
        report.main([str(bench), "--write", str(page), "--section", "cpu-c"])


needs_hf = pytest.mark.skipif(hf.available() is not None, reason="transformers is not installed")


@needs_hf
def test_trainer_script_learns_tformers_default_tokenizer() -> None:
    from omegaconf import OmegaConf

    from scripts.bench import hf_trainer_glue
    from transformer_cli.config import TokenizerConfig
    from transformer_cli.data.tokenize import train_tokenizer

    texts = [f"{a} film, {b} acting; the {c} plot!" for a in ("a good", "A dull", "some great", "one slow")
             for b in ("fine", "awful", "warm") for c in ("sharp", "cold", "quick", "bright")] * 3
    ours = train_tokenizer(texts, OmegaConf.structured(TokenizerConfig(vocab_size=120, max_length=12)))
    theirs = hf_trainer_glue.train_bpe(texts, vocab_size=120, min_frequency=2, max_length=12)
    assert theirs.get_vocab() == ours.get_vocab()  # the same vocabulary, the same ids
    sentence = "A GOOD film, with awful acting and a plot that goes on and on and on!"
    assert theirs(sentence, truncation=True, max_length=12)["input_ids"] == ours.encode(sentence).ids


@needs_hf
def test_trainer_script_decays_the_parameters_tformers_adamw_decays() -> None:
    from scripts.bench import hf_trainer_glue
    from scripts.bench.hf_finetune import decayed_parameter_names

    args = hf_trainer_glue.parse_args(["t.csv", "v.csv", "x.csv", "--d-model=16", "--layers=1", "--heads=2",
                                       "--d-ff=32", "--max-positions=64"])
    model = hf_trainer_glue.scratch_model(args, vocab_size=50, num_labels=2)
    assert model.config.layer_norm_eps == 1e-5 and model.config.attention_probs_dropout_prob == 0.0  # tformer's
    decayed = decayed_parameter_names(model)
    assert decayed == C.decayed_names(model)
    assert "bert.encoder.layer.0.attention.self.query.weight" in decayed and "classifier.weight" in decayed
    assert not any(n.endswith("bias") or "LayerNorm" in n or "embeddings" in n for n in decayed)
    trainer_args = hf_trainer_glue.training_arguments(args, steps=100)
    assert trainer_args.optim == "adamw_torch_fused" and trainer_args.warmup_steps == 6  # tformer's 6 %
    assert trainer_args.lr_scheduler_type == "cosine" and trainer_args.load_best_model_at_end


def test_trainer_script_gets_the_default_runs_sizes_and_settings() -> None:
    from scripts.bench import commands

    flags = commands.trainer_flags(commands.compose_default(()))
    for flag in ("--d-model=128", "--layers=2", "--heads=4", "--d-ff=512", "--vocab-size=8000", "--max-length=128",
                 "--norm-eps=1e-05",
                 "--epochs=4", "--batch-size=32", "--lr=0.001", "--schedule=cosine", "--warmup-ratio=0.06",
                 "--dropout=0.1", "--attn-dropout=0.0", "--head-dropout=0.1", "--weight-decay=0.01"):
        assert flag in flags
    smoke = commands.trainer_flags(commands.compose_default(commands.SIZES["smoke"].overrides))
    assert "--d-model=64" in smoke and "--epochs=2" in smoke and "--vocab-size=500" in smoke
    with pytest.raises(SystemExit, match="tokenizer kind"):
        commands.trainer_flags(commands.compose_default(("data.tokenizer.kind=wordpiece",)))
    with pytest.raises(SystemExit, match="schedule"):
        commands.trainer_flags(commands.compose_default(("schedule=noam",)))


@needs_hf
def test_trainer_scripts_defaults_are_the_default_runs_settings() -> None:
    from scripts.bench import commands, hf_trainer_glue

    files = ["t.csv", "v.csv", "x.csv"]
    flags = commands.trainer_flags(commands.compose_default(()))
    assert vars(hf_trainer_glue.parse_args([*files, *flags])) == vars(hf_trainer_glue.parse_args(files))


def test_whole_commands_are_compared_at_the_accuracy_both_reached(tmp_path: Path) -> None:
    import json

    from scripts.bench import commands

    start = 1000.0
    events = [{"event": "train", "split": "train", "epoch": 1, "loss": 0.7, "time": start + 5},
              {"event": "eval", "split": "validation", "epoch": 1, "accuracy": 0.70, "time": start + 10},
              {"event": "eval", "split": "validation", "epoch": 2, "accuracy": 0.74, "time": start + 20},
              {"event": "final", "split": "validation", "accuracy": 0.74, "time": start + 25}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    ours = {"wall_s": 30.0, "epochs": commands.tformer_epochs(tmp_path, start)}
    assert ours["epochs"] == [{"epoch": 1, "accuracy": 0.70, "elapsed_s": 10.0},
                              {"epoch": 2, "accuracy": 0.74, "elapsed_s": 20.0}]
    theirs = {"wall_s": 60.0, "epochs": [{"epoch": 1.0, "accuracy": 0.68, "elapsed_s": 25.0},
                                         {"epoch": 2.0, "accuracy": 0.72, "elapsed_s": 40.0}]}
    row = commands.paired(ours, theirs)
    assert row["target_accuracy"] == 0.72  # the lower of the two best accuracies
    assert row["tformer_time_to_target_s"] == 20.0 and row["trainer_time_to_target_s"] == 40.0
    assert row["time_to_target_ratio"] == pytest.approx(0.5) and row["wall_ratio"] == pytest.approx(0.5)
    assert commands.first_reached(theirs["epochs"], 0.9) is None


def _finetune_run(examples_s: float, test: float, wall: float = 100.0) -> dict:
    """One made-up whole fine-tuning run: 1,000 examples trained in 1000 / examples_s seconds."""
    return {"train_examples": 1000, "fit_seconds_without_evaluation": 1000 / examples_s, "wall_seconds": wall,
            "metrics": {"test": {"accuracy": test}, "validation": {"accuracy": test}}}


def _finetune_section() -> dict:
    """The --finetune section of two seeds, built by finetune.figures from made-up runs."""
    from scripts.bench import finetune

    rows = {"tformer": [_finetune_run(30, 0.80), _finetune_run(28, 0.82)],
            "hf": [_finetune_run(20, 0.81), _finetune_run(20, 0.80)],
            "trainer": [_finetune_run(25, 0.83), _finetune_run(25, 0.84, wall=50.0)]}
    return {"sentiment": rows, **finetune.figures(rows), "differences": list(finetune.DIFFERENCES), "epochs": 1,
            "seeds": 2, "smoke": False}


def test_finetune_goals_divide_examples_per_second_and_compare_accuracy_seed_by_seed() -> None:
    fin = _finetune_section()
    assert fin["sides"]["tformer"]["examples_per_s"]["median"] == pytest.approx(29.0)
    assert fin["ratios"]["hf"]["examples_per_s"]["median"] == pytest.approx(1.45)  # 1.5 and 1.4
    assert fin["ratios"]["trainer"]["wall_s"]["max"] == pytest.approx(2.0)
    goals = {g["goal"]: g for g in report.finetune_goals(fin)}
    assert goals["MiniLM fine-tuning: training examples/s vs HF plain loop"]["met"] is True  # 1.45 >= 1.3
    trainer = goals["MiniLM fine-tuning: training examples/s vs HF Trainer, best settings"]
    assert trainer["measured"] == pytest.approx(1.16) and trainer["met"] is False  # 1.2 and 1.12: median 1.16
    assert goals["MiniLM fine-tuning: test accuracy vs HF plain loop, same epochs"]["met"] is True  # +0.005
    accuracy = goals["MiniLM fine-tuning: test accuracy vs HF Trainer, best settings, same epochs"]
    assert accuracy["measured"] == pytest.approx(-0.025) and accuracy["met"] is False
    assert "0.8100 (0.8000-0.8200)" in accuracy["detail"]  # both accuracies beside the verdict
    assert all(g["met"] is None for g in report.finetune_goals(None))  # not run: not measured


def _commands_section() -> dict:
    """The --commands section of three made-up repetitions, built by the benchmark's own functions."""
    from scripts.bench import commands

    reps = []
    for ours, theirs in ((30.0, 60.0), (33.0, 55.0), (27.0, 66.0)):
        tformer = {"wall_s": ours, "validation_accuracy": 0.74, "test_accuracy": 0.73,
                   "epochs": [{"epoch": 1, "accuracy": 0.70, "elapsed_s": ours / 3},
                              {"epoch": 2, "accuracy": 0.74, "elapsed_s": 2 * ours / 3}]}
        trainer = {"wall_s": theirs, "validation_accuracy": 0.72, "test_accuracy": 0.71, "tokenizer_s": 1.5,
                   "epochs": [{"epoch": 1.0, "accuracy": 0.72, "elapsed_s": theirs / 2},
                              {"epoch": 2.0, "accuracy": 0.71, "elapsed_s": theirs}]}
        reps.append({"order": ["tformer", "trainer"], "tformer": tformer, "trainer": trainer,
                     "paired": commands.paired(tformer, trainer)})
    return {"mode": "full", "tformer_command": "tformer train",
            "trainer_command": "python -m scripts.bench.hf_trainer_glue TRAIN VALIDATION TEST --d-model=128",
            "dataset": "rotten_tomatoes", "epochs": 2, "batch_size": 32, "model_summary": "d_model 128, 2 layers",
            "reps": reps, **commands.summarise(reps), "differences": list(commands.DIFFERENCES)}


def test_markdown_renders_the_whole_command_and_minilm_sections_with_what_differs() -> None:
    results = {**_results(), "commands": _commands_section(), "finetune": _finetune_section()}
    results["goals"] = report.goals(results)
    text = report.render_markdown(results)
    assert text.index("#### Whole commands") < text.index("#### MiniLM fine-tuning") < text.index("#### Padding")
    assert "`python -m scripts.bench.hf_trainer_glue TRAIN VALIDATION TEST --d-model=128`; learning its tokenizer " \
           "took 1.5 (1.5-1.5) s" in text
    assert "| tformer train | 30.0 (27.0-33.0) | 0.7400 (0.7400-0.7400) |" in text  # median (min-max) of 3 runs
    assert "| tformer / Trainer | 0.50 (0.41-0.60) |" in text  # whole-command seconds, paired per run
    assert "s to the validation accuracy both reached (per run; median 0.7200)" in text  # the lower best
    assert "| 0.67 (0.55-0.80) |" in text  # time to 0.72: tformer's second epoch against Trainer's first
    for difference in (*results["commands"]["differences"], *results["finetune"]["differences"]):
        assert f"- {difference}" in text
    assert "| transformers Trainer | 25.0 (25.0-25.0) | 0.8350 (0.8300-0.8400) |" in text
    assert "| 1.16 (1.12-1.20) |" in text  # examples/s tformer / Trainer
    assert "| MiniLM fine-tuning: training examples/s vs HF Trainer, best settings | >= 1.2 | 1.160" in text
    assert "**NOT met**" in text
    without = report.render_markdown(_results())
    assert "Whole commands" not in without and "MiniLM" in without  # goals say "not measured"; no tables


def test_the_page_shows_a_reused_checkpoint_as_run_and_checks_the_seq2seq_goal() -> None:
    """The generated page names no path of the measuring machine, and seq2seq training has its goal row."""
    for given in ("--decode-checkpoint /x/run --out o.json", "--decode-checkpoint=/x/run --out o.json"):
        assert report._public(f"python -m scripts.bench {given}") == \
            "python -m scripts.bench --decode-checkpoint RUN --out o.json"
    ratio = {"median": 1.2, "min": 1.1, "max": 1.3, "n": 7}
    [goal] = report.seq2seq_goals({"ratios": {"hf_loop_same": {"real_tokens_per_s": ratio}}})
    assert goal["met"] and goal["measured"] == 1.2 and goal["target"] == ">= 1.15"
    assert report.seq2seq_goals(None)[0]["met"] is None
