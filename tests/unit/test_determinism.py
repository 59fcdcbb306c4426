"""Same seed, same everything: the tokenizer and a short run are reproducible across processes."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import hashlib
from transformer_cli.config import TokenizerConfig
from transformer_cli.data.tokenize import train_tokenizer
texts = [f"the {w} film number {i}, isn't it {w}er?" for i in range(300) for w in ("good", "bad", "odd")]
tok = train_tokenizer(texts, TokenizerConfig(vocab_size=300, min_frequency=1))
print(hashlib.sha256(tok.to_str().encode()).hexdigest())
"""


def test_bpe_vocabulary_is_identical_across_processes() -> None:
    """BPE training gives byte-identical tokenizers in separate processes (hash seeds differ)."""
    digests = {subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
               for _ in range(3)}
    assert len(digests) == 1
