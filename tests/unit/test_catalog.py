"""`tformer ls` / `tformer cp`, user config directories searched first, and shell completion routing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from transformer_cli import catalog, completion
from transformer_cli.catalog import (
    UserConfigDirs,
    copy_option,
    describe,
    find,
    options,
    take_config_dirs,
)
from transformer_cli.cli import main
from transformer_cli.config import conf_dir
from transformer_cli.errors import TformerError

SHIPPED = sorted(p for p in conf_dir().rglob("*.yaml"))


@pytest.fixture
def user_dirs() -> Iterator[Callable[..., None]]:
    """Set the user config directories that Hydra searches first; always reset afterwards."""
    dirs: list[Path] = []

    def use(*paths: Path) -> None:
        dirs.extend(paths)
        catalog.use_config_dirs([a for p in paths for a in ("--config-dir", str(p))])

    yield use
    UserConfigDirs.dirs = []


def test_every_shipped_yaml_is_listed_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    """`tformer ls` names every YAML under conf/, nested groups included, each with a one-line description."""
    listed = {o.path.resolve(): o for o in options()}
    assert set(listed) == {p.resolve() for p in SHIPPED}
    for path in SHIPPED:
        assert describe(path), f"{path} has no description comment on its first lines"
    with pytest.raises(SystemExit) as exit_:
        main(["ls"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for opt in listed.values():
        title = f"{opt.group}  (tformer train {opt.group}=<option>)" if opt.group else "commands"
        assert title in out
        assert f"  {opt.name} " in out and opt.description in out, opt.key


def test_description_skips_package_directive(tmp_path: Path) -> None:
    """The first comment that is not `# @package` describes the option; no comment gives ''."""
    f = tmp_path / "x.yaml"
    f.write_text("# @package _global_\n#\n# Does a thing.\n# More.\nkey: 1\n")
    assert describe(f) == "Does a thing."
    f.write_text("key: 1\n# late comment\n")
    assert describe(f) == ""


def test_ls_one_group_and_unknown_group(capsys: pytest.CaptureFixture[str]) -> None:
    """`tformer ls model` shows only that group; a misspelled group exits 2 with a suggestion."""
    with pytest.raises(SystemExit):
        main(["ls", "model"])
    out = capsys.readouterr().out
    assert "tiny" in out and "loss  (" not in out
    with pytest.raises(SystemExit) as exit_:
        main(["ls", "modle"])
    assert exit_.value.code == 2
    assert "did you mean 'model'" in capsys.readouterr().err


def test_cp_copies_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cp writes the exact file; into a directory it lands in GROUP/OPTION.yaml; no silent overwrite."""
    dest = tmp_path / "myconf" / "experiment" / "mine.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["cp", "experiment/quick", str(dest)])
    assert exit_.value.code == 0
    assert dest.read_text() == (conf_dir() / "experiment" / "quick.yaml").read_text()
    assert f"--config-dir {tmp_path / 'myconf'} experiment=mine" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["cp", "experiment/quick", str(dest)])
    assert exit_.value.code == 2 and "already exists" in capsys.readouterr().err
    assert copy_option(find("model=tiny"), tmp_path / "myconf") == tmp_path / "myconf" / "model" / "tiny.yaml"
    with pytest.raises(TformerError, match="did you mean model/tiny"):
        find("model/tinny")


def test_cp_output_composes_and_overrides_the_shipped_option(tmp_path: Path, user_dirs: Callable[..., None],
                                                             compose_train: Callable) -> None:
    """A copied, edited experiment composes by its new name; a same-named copy replaces the shipped option."""
    root = tmp_path / "myconf"
    mine = copy_option(find("experiment/quick"), root / "experiment" / "mine.yaml")
    mine.write_text(mine.read_text().replace("max_epochs: 5", "max_epochs: 7"))
    small = copy_option(find("model/small"), root)
    small.write_text(small.read_text().replace("d_model: 128", "d_model: 96"))
    (root / "data").mkdir()
    (root / "data" / "reviews.yaml").write_text("# My reviews.\nsource: local\nname: null\ntrain: reviews.csv\n"
                                                "text_column: body\nlabel_column: stars\n")
    user_dirs(root)
    cfg = compose_train(["experiment=mine"])
    assert cfg.trainer.max_epochs == 7 and cfg.model.d_model == 96  # the preset picks model=small: the user's
    assert compose_train([]).model.d_model == 96  # model=small is now the user's
    cfg = compose_train(["data=reviews"])
    assert (cfg.data.train, cfg.data.text_column) == ("reviews.csv", "body")
    listed = {o.key: o for o in options([root])}
    assert listed["model/small"].replaces_shipped and listed["experiment/mine"].source == str(root)


def test_take_config_dirs_forms(tmp_path: Path) -> None:
    """--config-dir DIR, --config-dir=DIR and -cd DIR are taken out; a missing directory is a clear error."""
    rest, dirs = take_config_dirs(["--config-dir", str(tmp_path), "a=1", f"--config-dir={tmp_path}", "-cd",
                                   str(tmp_path), "-m"])
    assert rest == ["a=1", "-m"] and dirs == [tmp_path.resolve()] * 3
    with pytest.raises(TformerError, match="does not exist"):
        take_config_dirs(["--config-dir", str(tmp_path / "nope")])
    with pytest.raises(TformerError, match="needs a directory"):
        take_config_dirs(["--config-dir"])


def test_completion_routes_by_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The command word completes to commands; after it, the line minus the command goes to its Hydra app."""
    calls: list[tuple[str, list[str], str]] = []
    apps = {c: (lambda tail, c=c: calls.append((c, tail, os.environ["COMP_LINE"]))) for c in ("train", "eval")}
    commands = ["train", "eval", "export", "ls", "cp"]
    monkeypatch.setenv("COMP_LINE", "tformer e")
    assert completion.complete(["query=bash"], apps, commands) == 0
    assert capsys.readouterr().out.split() == ["eval", "export"]
    monkeypatch.setenv("COMP_LINE", "/opt/train/bin/tformer train task=")
    completion.complete(["query=bash"], apps, commands)
    assert calls == [("train", ["-sc", "query=bash"], "/opt/train/bin/tformer  task=")]
    monkeypatch.setenv("COMP_LINE", "tformer cp model/ti")
    completion.complete(["query=bash"], apps, commands)
    assert capsys.readouterr().out.split() == ["model/tiny"]
    completion.complete(["install=bash"], apps, commands)
    assert calls[-1][:2] == ("train", ["-sc", "install=bash"])
