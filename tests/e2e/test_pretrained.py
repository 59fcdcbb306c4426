"""Fine-tuning a pretrained encoder through the real CLI: eval reproduces it, export format=hf gives
transformers the same logits, a run resumes without the model directory, and mistakes exit 2."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

WORDS = "the a film movie plot actor scene music story was very quite good great fine fun bad awful dull slow".split()
GOOD, BAD = {"good", "great", "fine", "fun"}, {"bad", "awful", "dull", "slow"}


def write_data(folder: Path) -> dict[str, Path]:
    """Texts labelled by their sentiment words, with a score and topic tags (all tasks read the same files)."""
    rng = random.Random(0)
    files = {}
    for split, n in (("train", 240), ("test", 60)):
        rows = []
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 10))]
            score = sum(w in GOOD for w in words) - sum(w in BAD for w in words)
            tags = ",".join(sorted({w for w in words if w in ("film", "movie", "music")})) or "story"
            rows.append({"text": " ".join(words), "label": "pos" if score >= 0 else "neg", "score": score,
                         "tags": tags})
        files[split] = folder / f"{split}.csv"
        with files[split].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return files


TASKS = {  # family, task overrides: one of each family and task between them
    "bert-classify": ("bert", ["task=classify"]),
    "roberta-multilabel": ("roberta", ["task=multilabel", "data.label_column=tags"]),
    "distilbert-regress": ("distilbert", ["task=regress", "data.label_column=score", "task.pooling=cls"]),
}


def train_args(folder: Path, data: dict[str, Path], run: Path, *extra: str) -> list[str]:
    """A short fine-tuning of a pretrained directory on the local files."""
    return ["train", "model=pretrained", f"model.path={folder}", "data=local", f"data.train={data['train']}",
            f"data.test={data['test']}", "trainer=debug", "trainer.max_steps=12", "trainer.eval_every=6",
            "optim.lr=1e-3", f"hydra.run.dir={run}", *extra]


def ok(proc) -> None:
    """The command succeeded; its output is shown when it did not."""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(TASKS))
def test_finetune_eval_predict_and_export_to_transformers(case: str, tmp_path: Path, tiny_hf: Callable[..., Path],
                                                         run_cli: Callable) -> None:
    """Fine-tune -> eval gives the run's test metrics exactly; export format=hf -> transformers'
    AutoModelForSequenceClassification and AutoTokenizer load it without missing or unused weights and give
    the logits tformer's model gives (within 1e-4), and the probabilities or values `tformer predict` prints."""
    import transformers

    family, task = TASKS[case]
    data, run = write_data(tmp_path), tmp_path / "run"
    ok(run_cli(train_args(tiny_hf(family), data, run, *task), tmp_path))
    summary = json.loads((run / "summary.json").read_text())
    ok(run_cli(["eval", f"ckpt={run}", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path))
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["metrics"] == summary["final"]["test"]

    out = tmp_path / "hf"
    ok(run_cli(["export", f"ckpt={run}", "format=hf", f"out={out}", f"hydra.run.dir={tmp_path / 'exp'}"], tmp_path))
    texts = ["the film was good", "a very dull and slow story", "music"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    proc = run_cli(["predict", f"ckpt={run}", f"input={tmp_path / 'texts.txt'}",
                    f"hydra.run.dir={tmp_path / 'pred'}"], tmp_path)
    ok(proc)
    predicted = [json.loads(line) for line in proc.stdout.splitlines()]

    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unused or mismatched
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        logits = model.eval()(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    config = model.config
    if config.problem_type == "regression":
        assert [r["value"] for r in predicted] == pytest.approx(logits[:, 0].tolist(), abs=1e-4)
    else:
        probs = logits.softmax(-1) if config.problem_type == "single_label_classification" else logits.sigmoid()
        for record, row in zip(predicted, probs.tolist()):
            wanted = {config.id2label[i]: p for i, p in enumerate(row)}
            assert record["probabilities"] == pytest.approx(wanted, abs=1e-4)
    ours = restored_logits(run, tokenizer, texts)
    assert torch.allclose(ours, logits, atol=1e-4), (ours, logits)


def restored_logits(run: Path, tokenizer, texts: list[str]) -> torch.Tensor:
    """tformer's own model from the run's checkpoint on the same padded batch, read out as transformers does."""
    from transformer_cli.restore import restore

    restored = restore(run)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = restored.model.eval()(batch["input_ids"], batch["attention_mask"].bool())
    if restored.config.task.name == "regress":
        return (out.double() * restored.task.std + restored.task.mean).float()[:, None]
    return out


@pytest.mark.slow
def test_resume_eval_and_predict_need_no_model_directory(tmp_path: Path, tiny_hf: Callable[..., Path],
                                                         run_cli: Callable) -> None:
    """The checkpoint describes itself: with the pretrained directory gone, a run resumes, evaluates, predicts."""
    folder, data, run = tiny_hf("bert"), write_data(tmp_path), tmp_path / "run"
    ok(run_cli(train_args(folder, data, run, "trainer.max_steps=6"), tmp_path))
    shutil.rmtree(folder)
    ok(run_cli(train_args(folder, data, run, "resume=auto"), tmp_path))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["checkpoints"]["resumed_from"]
    ok(run_cli(["eval", f"ckpt={run}", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path))
    (tmp_path / "t.txt").write_text("good film\n")
    ok(run_cli(["predict", f"ckpt={run}", f"input={tmp_path / 't.txt'}", f"hydra.run.dir={tmp_path / 'p'}"], tmp_path))


@pytest.mark.slow
def test_extra_code_in_the_directory_never_runs(tmp_path: Path, tiny_hf: Callable[..., Path],
                                               run_cli: Callable) -> None:
    """A model directory that also holds Python files trains normally, and none of them is imported."""
    folder, data = tiny_hf("bert"), write_data(tmp_path)
    marker = tmp_path / "ran.txt"
    for module in ("__init__.py", "modeling_bert.py", "configuration_bert.py", "tokenization_bert.py"):
        (folder / module).write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    ok(run_cli(train_args(folder, data, tmp_path / "run"), tmp_path))
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["pickle", "shape"])  # every other refusal: tests/unit/pretrained
def test_broken_directories_exit_2_naming_the_file(damage: str, tmp_path: Path, tiny_hf: Callable[..., Path],
                                                   run_cli: Callable) -> None:
    """Each broken directory: exit status 2, a message naming the file, no traceback, no run started."""
    folder = tiny_hf("bert")
    config = json.loads((folder / "config.json").read_text())
    named = {"pickle": "pytorch_model.bin", "model_type": "config.json", "tokenizer": "tokenizer.json",
             "truncated": "model.safetensors", "key": "config.json", "shape": "model.safetensors"}[damage]
    if damage == "pickle":
        from safetensors.torch import load_file

        torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    elif damage in ("model_type", "key"):
        change = {"model_type": "xlnet"} if damage == "model_type" else {"rotary_dim": 4}
        (folder / "config.json").write_text(json.dumps({**config, **change}))
    elif damage == "tokenizer":
        (folder / "tokenizer.json").unlink()
    elif damage == "truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:1000])
    else:
        (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    proc = run_cli(train_args(folder, write_data(tmp_path), tmp_path / "run"), tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True], ids=["own-target-vocab", "shared-vocab-copy"])
def test_a_seq2seq_encoder_starts_from_a_pretrained_one(tmp_path: Path, tiny_hf: Callable[..., Path],
                                                       run_cli: Callable, shared: bool) -> None:
    """task=seq2seq with model=pretrained: the encoder (and source tokenizer) are the pretrained ones, the
    decoder and its target vocabulary are new, or (shared) the targets use the pretrained tokenizer framed
    [CLS] ... [SEP], the decoder reads and writes the pretrained token table and copies source tokens; the
    checkpoint evaluates and predicts."""
    folder = tiny_hf("bert")
    pairs = [{"text": " ".join(ws), "label": " ".join(reversed(ws))}
             for ws in ([random.Random(i).choice(WORDS) for _ in range(4)] for i in range(120))]
    with (tmp_path / "pairs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(pairs)
    run = tmp_path / "run"
    vocab = ["task.shared_vocab=true", "task.copy_attention=true"] if shared else ["task.target_vocab_size=60",
                                                                         "task.target_min_frequency=1"]
    ok(run_cli(["train", "task=seq2seq", "model=pretrained", f"model.path={folder}", "data=local",
                f"data.train={tmp_path / 'pairs.csv'}", *vocab,
                "trainer=debug", "trainer.max_steps=6", "trainer.eval_every=6", f"hydra.run.dir={run}"], tmp_path))
    from transformer_cli.restore import restore

    restored = restore(run)
    assert restored.config.model.family == "bert" and restored.config.data.tokenizer.kind == "pretrained"
    assert restored.tokenizer.get_vocab_size() == json.loads((folder / "config.json").read_text())["vocab_size"]
    model = restored.model
    assert (model.decoder.embed.tokens.weight is model.encoder.embed.tokens.weight) == shared
    assert (model.copy is not None) == shared
    ok(run_cli(["eval", f"ckpt={run}", "split=validation"], tmp_path))
    (tmp_path / "in.txt").write_text("good bad fine\n")
    proc = run_cli(["predict", f"ckpt={run}", f"input={tmp_path / 'in.txt'}"], tmp_path)
    ok(proc)
    assert len(proc.stdout.strip().splitlines()) == 1


@pytest.mark.slow
def test_plan_shows_what_the_pretrained_model_brings(tmp_path: Path, tiny_hf: Callable[..., Path],
                                                     run_cli: Callable) -> None:
    """tformer plan reads the directory: its architecture, and the fine-tuning schedule the preset chose."""
    data = write_data(tmp_path)
    proc = run_cli(["plan", "model=pretrained", f"model.path={tiny_hf('distilbert')}", "data=local",
                    f"data.train={data['train']}"], tmp_path)
    ok(proc)
    assert "distilbert" in proc.stdout and "linear" in proc.stdout and "5e-05" in proc.stdout
