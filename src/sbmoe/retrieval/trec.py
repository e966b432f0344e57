"""TREC run files: one line per hit, ``query_id Q0 doc_id rank score tag``, readable by trec_eval.

Order: within a query, hits are written by score descending and, for tied scores, by doc id descending.
That is the order trec_eval (and pytrec_eval) rebuild from the scores when they re-score a file, so the
rank column always agrees with the ranking that is evaluated. Queries are written in sorted id order.

Precision: scores are written with ``repr(float)``, the shortest decimal that reads back as the very same
double. A run therefore survives a write and a read bit for bit: tied scores stay tied and nearly-tied
scores stay apart. A fixed format would not: ``%.6f`` merges scores that differ past the sixth decimal
(common among cosine similarities), and even ``%.9g``, exact for float32, rounds float64 scores.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from sbmoe.errors import DataError, SbmoeError
from sbmoe.io import atomic_write_text

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
"""query id -> {doc id: score}; a higher score ranks higher."""

_WHITESPACE = re.compile(r"\s")


def write_trec_run(run: Run, path: str | Path, tag: str = "sbmoe") -> None:
    """Write `run` to `path` in TREC format, atomically (a temporary file in the same folder, then a rename).

    Ranks start at 1. Raises SbmoeError if an id or the tag is empty or contains whitespace (the line
    could not be read back) or a score is NaN (the ranking would be undefined).
    """
    _check_token(tag, "run tag")
    lines = []
    for query_id in sorted(run):
        hits = run[query_id]
        _check_token(query_id, "query id")
        for doc_id, score in hits.items():
            _check_token(doc_id, f"doc id (query {query_id!r})")
            if math.isnan(score):
                raise SbmoeError(f"score of document {doc_id!r} for query {query_id!r} is NaN")
        # Score descending, then doc id descending: trec_eval's own order (see the module docstring).
        ordered = sorted(hits.items(), key=lambda hit: (hit[1], hit[0]), reverse=True)
        lines.extend(
            f"{query_id} Q0 {doc_id} {rank} {float(score)!r} {tag}\n"
            for rank, (doc_id, score) in enumerate(ordered, start=1)
        )
    atomic_write_text(path, "".join(lines))
    logger.debug("Wrote %d hits for %d queries to %s", len(lines), len(run), path)


def read_trec_run(path: str | Path) -> Run:
    """Read a TREC run file. Hits keep the file's order within each query; blank lines are skipped.

    Raises DataError, naming the file and the line, for: a missing file, a line without exactly six
    fields, a rank that is not an integer, a score that is not a number (or is NaN), and a
    (query, document) pair listed twice.
    """
    path = Path(path)
    run: Run = {}
    try:
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 6:
                    raise DataError(
                        path,
                        f"expected 6 fields 'query_id Q0 doc_id rank score tag', found {len(fields)}",
                        line=line_number,
                    )
                query_id, _, doc_id, rank, score, _ = fields
                try:
                    int(rank)
                except ValueError:
                    raise DataError(path, f"rank {rank!r} is not an integer", line=line_number) from None
                try:
                    value = float(score)
                except ValueError:
                    raise DataError(path, f"score {score!r} is not a number", line=line_number) from None
                if math.isnan(value):
                    raise DataError(path, f"score {score!r} is not a number", line=line_number)
                hits = run.setdefault(query_id, {})
                if doc_id in hits:
                    raise DataError(
                        path,
                        f"document {doc_id!r} is listed twice for query {query_id!r}",
                        line=line_number,
                    )
                hits[doc_id] = value
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, not a run file") from None
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    if not run:
        logger.warning("%s holds no hits", path)
    return run


def _check_token(value: str, what: str) -> None:
    if not isinstance(value, str) or not value or _WHITESPACE.search(value):
        raise SbmoeError(
            f"{what} {value!r} cannot be written to a TREC run file: it must be non-empty without spaces"
        )
