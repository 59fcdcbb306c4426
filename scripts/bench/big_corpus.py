"""`python -m scripts.bench.big_corpus ROWS OUT.csv`: a large labelled CSV from real review sentences.

Each row joins the first half of one Rotten Tomatoes sentence to the second half of another (seeded), so
lengths and vocabulary stay those of real text while the corpus grows to any size.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from transformer_cli.data.builtin import prepare_builtin


def halves(source: Path) -> tuple[list[str], list[str], list[str]]:
    """First halves, second halves and labels of the sentences of a CSV with text and label columns."""
    heads, tails, labels = [], [], []
    with source.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            words = row["text"].split()
            cut = len(words) // 2
            heads.append(" ".join(words[:cut]))
            tails.append(" ".join(words[cut:]))
            labels.append(row["label"])
    return heads, tails, labels


def write_corpus(rows: int, out: Path, seed: int = 0) -> None:
    """Write `rows` recombined sentences with a label each to `out` (a CSV with text and label columns)."""
    heads, tails, labels = halves(prepare_builtin("rotten_tomatoes")["train"])
    rng = random.Random(seed)
    n = len(heads)
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            a, b = rng.randrange(n), rng.randrange(n)
            writer.writerow([f"{heads[a]} {tails[b]}".strip(), labels[a]])


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.big_corpus", description=__doc__)
    parser.add_argument("rows", type=int)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    write_corpus(args.rows, args.out)


if __name__ == "__main__":
    main()
