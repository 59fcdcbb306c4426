"""Streaming metrics, one module per family; a task picks its family (tasks/<task>.py)."""

from transformer_cli.metrics.classification import ClassificationMetrics
from transformer_cli.metrics.common import Metrics
from transformer_cli.metrics.multilabel import MultiLabelMetrics
from transformer_cli.metrics.regression import RegressionMetrics, average_ranks
from transformer_cli.metrics.seq2seq import Seq2SeqMetrics, edit_distance

__all__ = ["ClassificationMetrics", "Metrics", "MultiLabelMetrics", "RegressionMetrics", "Seq2SeqMetrics",
           "average_ranks", "edit_distance"]
