"""KJV -> RV1909: English and Spanish Bible verses paired by verse, read out of two Debian SWORD packages."""

from __future__ import annotations

from pathlib import Path

from transformer_cli.data.builtin import deb, sword
from transformer_cli.data.builtin.spec import BuiltinDataset, Part, Row

_SWORD_DIR = "usr/share/sword/modules/texts/ztext"
_SWORD_FILES = ("bzs", "bzv", "bzz")
_DEBIAN_POOL = "http://deb.debian.org/debian/pool/main/s"

KJV_DEB = Part(
    package="sword-text-kjv",
    archive="sword-text-kjv_14.3-1_all.deb",
    sha256="9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57",
    url=f"{_DEBIAN_POOL}/sword-text-kjv/sword-text-kjv_14.3-1_all.deb",
)
RV1909_DEB = Part(
    package="sword-text-sparv",
    archive="sword-text-sparv_2.60-1_all.deb",
    sha256="5c87f9b2bc97457e8a872f5bae7ea7ce59cb3de1dcee73e4d4740451863694cf",
    url=f"{_DEBIAN_POOL}/sword-text-sparv/sword-text-sparv_2.60-1_all.deb",
)


def extract(folder: Path) -> list[Row]:
    """English (KJV) -> Spanish (RV1909) verse pairs; both use KJV versification, so slots align."""
    english = _sword_verses(folder / KJV_DEB.archive, "engKJV2006eb")
    spanish = _sword_verses(folder / RV1909_DEB.archive, "spaRV1909eb")
    rows = []
    for (ref, en), (ref_es, es) in zip(english, spanish, strict=True):
        assert ref == ref_es  # both walk the same versification table
        source, target = sword.plain_text(en), sword.plain_text(es)
        if source and target:  # 18 verses are empty in RV1909: nothing to pair
            rows.append({"source": source, "target": target, "ref": ref})
    return rows


def _sword_verses(deb_path: Path, module: str) -> list[tuple[str, str]]:
    """(reference, raw OSIS) for every verse of a zText module read out of its Debian package."""
    names = {(t, ext): f"{_SWORD_DIR}/{module}/{t}.{ext}" for t in sword.TESTAMENTS for ext in _SWORD_FILES}
    files = deb.read_deb(deb_path, names.values())
    testaments = {t: sword.Testament(*(files[names[t, ext]] for ext in _SWORD_FILES)) for t in sword.TESTAMENTS}
    return list(sword.verses(testaments, f"{deb_path.name}:{module}"))


KJV_RV1909 = BuiltinDataset(
    name="kjv_rv1909",
    task="seq2seq",
    package=f"{KJV_DEB.package} {RV1909_DEB.package}",
    archive="kjv_rv1909",
    sha256="",
    sdist=False,
    text_column="source",
    label_column="target",
    citation="The Holy Bible: King James Version (1769 text; CrossWire/eBible.org SWORD module "
    "engKJV2006eb 14.3) and Reina-Valera 1909 (spaRV1909eb 2.60), as packaged by Debian in "
    "sword-text-kjv and sword-text-sparv; both public domain (the KJV is restricted by Crown letters "
    "patent in the United Kingdom only)",
    extract=extract,
    downloader="apt",
    parts=(KJV_DEB, RV1909_DEB),
    notes="English -> Spanish Bible verses aligned by KJV versification; ref names the verse "
    "(OSIS book, chapter:verse). Footnotes, headings, Pauline subscriptions, Strong's numbers and "
    "pilcrows are removed; canonical psalm titles are kept. Verses empty on either side are "
    "dropped. Splits are decided by the English verse, so identical English verses share a split",
)
