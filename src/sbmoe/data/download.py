"""`sbmoe data download NAME`: fetch a public BEIR collection, check it, lay it out for the loader.

The archive is fetched with pooch (retries, progress, the published md5 checked before anything is
unpacked), unpacked into a temporary folder beside the destination (entries that would land outside it
are refused), validated with `validate_dataset`, and only then renamed into place: an interrupted or bad
download leaves nothing half written. The checksums are those of the BEIR README's table of public
collections (github.com/beir-cellar/beir).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from sbmoe.data.beir import load_dataset
from sbmoe.data.validate import validate_dataset
from sbmoe.errors import DataError, SbmoeError

logger = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
BEIR_MD5 = {
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}


def known_collections() -> dict[str, str]:
    """Name -> source URL of every collection `download_collection` knows."""
    return {name: BEIR_URL.format(name=name) for name in BEIR_MD5}


def download_collection(
    name: str,
    data_dir: str | Path,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Download collection `name` into DATA_DIR/NAME and return that folder.

    url / md5: another source of the same layout (a mirror) and its checksum; both or neither. Raises
    SbmoeError (unknown name, existing destination, failed download, wrong checksum, bad archive) or
    DataError (the unpacked files are malformed); in every case DATA_DIR/NAME is left as it was.
    """
    if (url is None) != (md5 is None):
        raise SbmoeError("a download source needs both its URL and its md5 checksum")
    if url is None:
        if name not in BEIR_MD5:
            raise SbmoeError(
                f"unknown collection {name!r}; known: {', '.join(BEIR_MD5)} (sbmoe data download --list)"
            )
        url, md5 = BEIR_URL.format(name=name), BEIR_MD5[name]
    root = Path(data_dir)
    target = root / name
    if target.exists():
        raise SbmoeError(f"{target} already exists; remove it first to download {name} again")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=root) as staging:
        archive = _fetch(url, md5, Path(staging), progress)
        unpacked = _unpack(archive, Path(staging) / "unpacked")
        dataset = load_dataset(unpacked)
        report = validate_dataset(dataset)  # malformed files raise DataError naming the file and line
        for problem in report["problems"]:
            logger.warning("%s: %s", name, problem)
        os.replace(unpacked, target)
    logger.info(
        "%s: %d documents, %d queries, splits %s in %s",
        name, report["num_documents"], report["num_queries"], ", ".join(report["splits"]), target,
    )  # fmt: skip
    return target


def _fetch(url: str, md5: str, folder: Path, progress: bool) -> Path:
    import pooch
    import requests

    try:
        return Path(
            pooch.retrieve(
                url, known_hash=f"md5:{md5}", fname="archive.zip", path=folder, progressbar=progress
            )
        )
    except ValueError as error:  # pooch: the checksum does not match
        raise SbmoeError(
            f"{url}: the download does not have the published checksum md5:{md5} ({error})"
        ) from None
    except (requests.RequestException, OSError) as error:
        raise SbmoeError(f"{url}: download failed ({type(error).__name__}: {error})") from None


def _unpack(archive: Path, folder: Path) -> Path:
    """Unpack a zip into `folder`; return the folder holding corpus.jsonl(.gz) (the archive's top folder)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.infolist():
                destination = (folder / member.filename).resolve()
                if not destination.is_relative_to(folder.resolve()):
                    raise SbmoeError(
                        f"{archive.name}: entry {member.filename!r} would be written outside the folder"
                    )
            zipped.extractall(folder)
    except zipfile.BadZipFile as error:
        raise SbmoeError(f"the downloaded archive is not a valid zip ({error})") from None
    candidates = sorted(
        path.parent for pattern in ("corpus.jsonl", "corpus.jsonl.gz") for path in folder.rglob(pattern)
    )
    if len(candidates) != 1:
        found = ", ".join(str(path.relative_to(folder)) for path in candidates) or "none"
        raise DataError(archive, f"expected one folder with corpus.jsonl in the archive, found {found}")
    collection = candidates[0]
    if collection != folder:  # the BEIR zips hold NAME/{corpus.jsonl, queries.jsonl, qrels/}
        moved = folder.parent / "collection"
        shutil.move(collection, moved)
        shutil.rmtree(folder)
        collection = moved
    return collection
