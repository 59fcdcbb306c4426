"""`export format=hf` refuses, saying why, what no transformers classifier can hold."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from transformer_cli.errors import TformerError
from transformer_cli.pretrained.export import family_of


def restored(family: str = "bert", task: str = "classify", pooling: str = "cls", loss_kind: str = "index"):
    """Just what family_of reads of a restored checkpoint."""
    config = OmegaConf.create({"model": {"family": family}, "task": {"name": task, "pooling": pooling}})
    return SimpleNamespace(config=config, task=SimpleNamespace(loss_kind=loss_kind))


def test_a_bert_classifier_with_first_token_pooling_is_exportable() -> None:
    assert family_of(restored()).classifier == "BertForSequenceClassification"
    assert family_of(restored("roberta", "regress")).classifier == "RobertaForSequenceClassification"


@pytest.mark.parametrize(("case", "reason"), [
    (restored(family="tformer"), "trained from scratch"),
    (restored(task="seq2seq"), "task 'seq2seq'"),
    (restored(pooling="mean"), "pools the mean"),
    (restored(loss_kind="binary"), "one logit"),
])
def test_models_without_an_equivalent_are_refused(case: SimpleNamespace, reason: str) -> None:
    with pytest.raises(TformerError, match=reason):
        family_of(case)
