"""Copying (pointer-generator) and the shared source/target vocabulary: a distribution that sums to one, puts
the copy attention's mass on the source's own ids, stays finite with gradients everywhere (decoding with and
without the cache: tests/unit/test_decoding.py), and a task whose targets use the source tokenizer."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from transformer_cli.config import ModelConfig, TokenizerConfig
from transformer_cli.data.tokenize import train_tokenizer
from transformer_cli.decoding import greedy
from transformer_cli.errors import TformerError
from transformer_cli.model import Seq2SeqModel
from transformer_cli.tasks.seq2seq import Seq2SeqConfig, Seq2SeqTask, frame_target

BOS, EOS = 4, 5


def copy_model(seed: int = 0, copy: bool = True) -> Seq2SeqModel:
    """A small untrained model with one vocabulary of 50 ids for source and target."""
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0)
    return Seq2SeqModel(50, 50, cfg, shared_vocab=True, copy=copy).eval()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four padded sources over ids 6..49 and target inputs starting with BOS."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(6, 50, (4, 7), generator=g)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 4:] = False
    src[~mask] = 0
    tgt = torch.randint(6, 50, (4, 5), generator=g)
    tgt[:, 0] = BOS
    return src, mask, tgt


def test_copy_scores_are_log_probabilities_that_sum_to_one() -> None:
    """With copying the model returns log-probabilities: exp sums to 1 at every position; finite everywhere."""
    src, mask, tgt = batch()
    out = copy_model()(src, mask, tgt)  # (4, 5, 50)
    assert out.shape == (4, 5, 50) and torch.isfinite(out).all()
    assert torch.allclose(out.exp().sum(-1), torch.ones(4, 5), atol=1e-5)
    assert torch.allclose(torch.log_softmax(out, -1), out, atol=1e-5)  # the loss's log-softmax changes nothing


def test_copy_mass_lands_on_the_source_ids() -> None:
    """With the gate forced to copy, all probability sits on ids present in the (unpadded) source."""
    model = copy_model()
    with torch.no_grad():
        model.copy.gate.bias.fill_(-60.0)  # logit of generating: sigmoid(-60) ~ 0
    src, mask, tgt = batch()
    probs = model(src, mask, tgt).exp()  # (4, 5, 50)
    for b in range(4):
        present = set(src[b][mask[b]].tolist())
        on_source = probs[b][:, sorted(present)].sum(-1)  # (5,)
        assert torch.allclose(on_source, torch.ones(5), atol=1e-5), (b, on_source)
    assert probs[1][:, 0].max() < 1e-6  # padding (id 0, masked) is never copied


def test_copy_gradients_are_finite_and_reach_every_parameter() -> None:
    """NLL of tokens absent from the source (copy probability 0) keeps finite gradients on every parameter."""
    model = copy_model().train()
    src, mask, tgt = batch()
    absent = torch.full((4, 5), 3)  # id 3 is never in a source (sources use 6..49)
    loss = torch.nn.functional.nll_loss(model(src, mask, tgt).reshape(-1, 50), absent.reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        if p.requires_grad and name != "encoder.embed.types.weight":  # one segment: its second row is unused
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def dense_mixture(model: Seq2SeqModel, src: torch.Tensor, mask: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """The pointer-generator mixture written over the whole (B, T, V), as See et al. state it: the reference."""
    memory = model.encode(src, mask)
    hidden = model.decoder(tgt, memory.kvs, memory.mask)  # (B, T, D)
    logits = model.proj(hidden) * model.scale_out  # (B, T, V)
    gen = model.copy
    attn = torch.softmax((gen.query(hidden) @ memory.copy.keys.transpose(1, 2) * gen.scale)
                         .masked_fill(~mask[:, None, :], float("-inf")), dim=-1)  # (B, T, S)
    gate = gen.gate(torch.cat([hidden, attn @ memory.states], dim=-1))  # (B, T, 1)
    copied = torch.zeros(logits.shape).scatter_add_(2, src[:, None, :].expand(-1, tgt.shape[1], -1), attn)
    p = torch.sigmoid(gate) * torch.softmax(logits, -1) + torch.sigmoid(-gate) * copied  # (B, T, V)
    return p.log()


def test_the_mixture_equals_the_dense_formula_with_repeated_ids_and_padding() -> None:
    """The mixture computed on the source positions equals the dense (B, T, V) formula, log-probabilities and
    gradients, when sources repeat ids (their attention adds up) and are padded."""
    src, mask, tgt = batch()
    src[0, :4] = torch.tensor([9, 12, 9, 9])  # id 9 three times
    src[2, 5] = src[2, 1]
    targets = src[:, 1:6]  # copyable targets, some of them repeated ids
    ours, reference = copy_model(), copy_model()  # eval mode: no dropout
    out, ref = ours(src, mask, tgt), dense_mixture(reference, src, mask, tgt)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    for m, scores in ((ours, out), (reference, ref)):
        torch.nn.functional.nll_loss(scores.reshape(-1, 50), targets.reshape(-1)).backward()
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name


def test_shared_vocab_is_one_table() -> None:
    """Encoder input, decoder input and output projection are the same tensor."""
    model = copy_model(copy=False)
    table = model.encoder.embed.tokens.weight
    assert model.decoder.embed.tokens.weight is table and model.proj.weight is table
    assert model.copy is None


def test_a_copy_only_model_decodes_source_tokens() -> None:
    """With the gate forced to copy, every decoded token is one of its source's ids (or EOS)."""
    model = copy_model()
    with torch.no_grad():
        model.copy.gate.bias.fill_(-60.0)
    src, mask, _ = batch()
    hyps = greedy(model, src, mask, BOS, EOS, torch.tensor([6, 6, 6, 6]))
    for b, h in enumerate(hyps):
        assert set(h.tokens) <= set(src[b][mask[b]].tolist()), (b, h.tokens)


def source_tokenizer() -> Tokenizer:
    """A small tformer tokenizer trained on a few sentences (it has [BOS] and [EOS])."""
    texts = ["the quick brown fox jumps over the lazy dog", "a tool to manage packages", "the editor for text"] * 5
    return train_tokenizer(texts, TokenizerConfig(vocab_size=200, min_frequency=1, max_length=32))


def test_shared_vocab_task_frames_targets_with_the_source_tokenizer() -> None:
    """fit_state keeps the source tokenizer; targets are [BOS] ids [EOS] in the source's ids; text round-trips."""
    src_tok = source_tokenizer()
    cfg = Seq2SeqConfig(shared_vocab=True, copy_attention=True, target_vocab_size=7)  # the vocabulary size is unused
    state = Seq2SeqTask.fit_state(["a tool for text"], cfg, None, "train.csv", src_tok)
    task = Seq2SeqTask(cfg, "index", state)
    assert task.vocab_size == src_tok.get_vocab_size()
    [ids] = task.encode_targets(["the quick fox"], where=None)
    assert ids[0] == task.bos and ids[-1] == task.eos
    assert list(ids[1:-1]) == src_tok.encode("the quick fox", add_special_tokens=False).ids
    assert task.decode(ids.tolist()) == "the quick fox"


def bert_like_tokenizer(pad: str = "[PAD]") -> Tokenizer:
    """A WordPiece tokenizer with BERT's special tokens and no [BOS]/[EOS]."""
    vocab = {pad: 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4, "fox": 5}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_a_pretrained_tokenizer_frames_targets_with_cls_and_sep() -> None:
    """A BERT vocabulary has no [BOS]/[EOS]: targets become [CLS] ... [SEP]."""
    _, bos, eos = frame_target(bert_like_tokenizer(), 16)
    assert (bos, eos) == (2, 3)


def test_a_tokenizer_whose_padding_is_not_id_0_is_refused() -> None:
    """Target padding is id 0; a shared vocabulary with another token there is refused with the way out."""
    with pytest.raises(TformerError, match="shared_vocab=false"):
        frame_target(bert_like_tokenizer(pad="<s>"), 16)


def test_copy_without_a_shared_vocabulary_is_refused(compose_train) -> None:
    """task.copy_attention=true alone: an error naming task.shared_vocab, before anything runs."""
    from transformer_cli.validate import check_train_config

    cfg = compose_train(["task=seq2seq", "task.copy_attention=true"])
    with pytest.raises(TformerError, match="task.shared_vocab=true"):
        check_train_config(cfg)
