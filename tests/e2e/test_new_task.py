"""Adding a task is one Python file, one YAML and one table entry: a toy task written here trains, evaluates,
predicts, plans and exports through the real code, with nothing else changed."""

from __future__ import annotations

import csv
import importlib
import json
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from transformer_cli.config import conf_dir
from transformer_cli.validate import register_schemas

# The one Python file: a yes/no task (one logit, a binary loss), written against the Task protocol only.
TOY_TASK = '''
"""Yes/no answers: one logit per text, accuracy."""

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext
from transformer_cli.metrics import ClassificationMetrics
from transformer_cli.tasks.common import encode_rows, one_per_row, sequence_forward, sequence_model
from transformer_cli.tasks.protocol import Readout

METRICS = {"loss": "min", "accuracy": "max", "macro_f1": "max", "mcc": "max"}
STATE = {"seen": int}
ANSWERS = ["no", "yes"]


@dataclass
class YesNoConfig:
    name: str = "yesno"
    pooling: str = "mean"
    head_dropout: float = 0.0


class YesNoTask:
    loss_kind = "binary"

    def __init__(self, cfg: Any, loss_kind: str, state: dict[str, Any]) -> None:
        self.cfg = cfg
        self.seen = int(state["seen"])

    @staticmethod
    def fit_state(values: Sequence[Any], cfg: Any, fixed: Any, source: str, tokenizer: Any = None) -> dict[str, Any]:
        return {"seen": len(values)}

    def build_model(self, model_cfg: Any, vocab_size: int) -> torch.nn.Module:
        return sequence_model(model_cfg, vocab_size, 1, self.cfg, squeeze=True)

    def encode(self, rows: Any, tokenizer: Any, labelled: bool = True) -> Any:
        return encode_rows(rows, tokenizer, labelled, self.encode_targets)

    def encode_targets(self, values: Sequence[Any], where: Any) -> torch.Tensor:
        bad = [i for i, v in enumerate(values) if str(v) not in ANSWERS]
        if bad:
            raise TformerError(f"answer {values[bad[0]]!r} at {where.at(bad[0])} is not yes or no")
        return torch.tensor([ANSWERS.index(str(v)) for v in values])

    def loss_context(self, targets: torch.Tensor) -> LossContext:
        return LossContext(num_outputs=1, label_counts=torch.bincount(targets, minlength=2),
                           num_examples=len(targets))

    def forward(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return sequence_forward(model, batch)

    def loss_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs.float(), targets.float()

    def new_metrics(self, side: Any = None) -> ClassificationMetrics:
        return ClassificationMetrics(2, ANSWERS)

    def observe(self, metrics: Any, model: Any, batch: Any, outputs: torch.Tensor) -> None:
        metrics.update((outputs > 0).long().cpu(), batch.targets.cpu())

    def predict(self, model: torch.nn.Module, batch: Any, top_k: int) -> list[dict[str, Any]]:
        p = torch.sigmoid(self.forward(model, batch).float()).cpu().tolist()
        return [{"answer": ANSWERS[int(x > 0.5)], "p_yes": x} for x in p]

    def merge_predictions(self, records: list[dict[str, Any]], encoded: Any) -> list[dict[str, Any]]:
        return one_per_row(records, encoded)

    def readout(self) -> Readout:
        return Readout(("p_yes",), lambda out: (torch.sigmoid(out.float()),), {"answers": ANSWERS})

    def final_decoding(self) -> None:
        pass

    def describe(self) -> str:
        return f"yes/no answers, trained on {self.seen} texts"

    def state(self) -> dict[str, Any]:
        return {"seen": self.seen}
'''

# The one YAML: the task's schema, its natural loss and data.
TOY_YAML = """\
# Yes/no answers to texts.
defaults:
  - /schema/task/yesno@_here_
  - /loss@_global_.loss: bce
  - /data@_global_.data: local
  - _self_

name: yesno
"""


def write_data(folder: Path) -> tuple[Path, Path]:
    """Texts answered yes when they contain 'good': a pattern a tiny model learns in a few steps."""
    words = "good film plot actor scene music long short dull bright".split()
    rows = []
    for i in range(240):
        text = " ".join(words[(i * k + 3) % len(words)] for k in range(1, 4 + i % 5))
        rows.append({"text": text, "label": "yes" if "good" in text.split() else "no"})
    paths = []
    for name, part in (("train.csv", rows[:200]), ("test.csv", rows[200:])):
        with (folder / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(part)
        paths.append(folder / name)
    return paths[0], paths[1]


def compose_with(conf: Path, command: str, overrides: list[str]):
    """A command's config composed as the CLI would, with the user's config folder searched too."""
    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(command, overrides=[*overrides, f"hydra.searchpath=[file://{conf}]"])


@pytest.mark.slow
def test_a_new_task_is_one_file_one_yaml_and_one_table_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    from transformer_cli.export import export
    from transformer_cli.plan import make_plan
    from transformer_cli.predict import predict
    from transformer_cli.run import evaluate, train
    from transformer_cli.tasks import TASKS, TaskSpec

    (tmp_path / "yesno_task.py").write_text(textwrap.dedent(TOY_TASK))
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "yesno.yaml").write_text(TOY_YAML)
    monkeypatch.syspath_prepend(str(tmp_path))
    toy = importlib.import_module("yesno_task")
    monkeypatch.setitem(TASKS, "yesno", TaskSpec(toy.YesNoConfig, toy.YesNoTask.fit_state, toy.YesNoTask,
                                                 ("binary",), "bce", toy.METRICS, "accuracy", "yes/no answers",
                                                 state=toy.STATE))
    train_csv, test_csv = write_data(tmp_path)
    overrides = ["task=yesno", "model=tiny", f"data.train={train_csv}", f"data.test={test_csv}",
                 "data.tokenizer.vocab_size=100", "data.tokenizer.min_frequency=1", "trainer=debug",
                 "trainer.max_steps=40", "trainer.eval_every=20", "optim.lr=3e-3", "model.dropout=0.0"]

    plan = make_plan(compose_with(tmp_path / "conf", "plan", overrides))
    assert plan.task == "yesno" and plan.task_line == "yes/no answers, trained on 180 texts"

    run_dir = tmp_path / "run"
    best = train(compose_with(tmp_path / "conf", "train", overrides), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "yesno" and summary["loss"] == "bce" and summary["mode"] == "max"
    assert best == summary["best_value"] > 0.8  # it learned the pattern
    test_accuracy = summary["final"]["test"]["accuracy"]

    scalars = evaluate(compose_with(tmp_path / "conf", "eval", [f"ckpt={run_dir}", "progress=false"]),
                       tmp_path / "eval")
    assert scalars["accuracy"] == test_accuracy

    texts = tmp_path / "texts.txt"
    texts.write_text("good film good\ndull scene\n")
    capsys.readouterr()
    assert predict(compose_with(tmp_path / "conf", "predict", [f"ckpt={run_dir}", f"input={texts}"])) == 2
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in records] == [1, 2] and {r["answer"] for r in records} <= {"yes", "no"}

    card = export(compose_with(tmp_path / "conf", "export", [f"ckpt={run_dir}", "format=torch_export",
                                                             f"out={tmp_path / 'exported'}"]), tmp_path)
    assert [o["name"] for o in card["outputs"]] == ["p_yes"] and card["answers"] == ["no", "yes"]
