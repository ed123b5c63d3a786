"""The studies' result files: JSON lines, one finished measurement per line, committed under ``benchmarks/results/``.

A study appends a line as soon as a measurement is done and skips the keys already there when it runs again,
so a result file only ever holds whole records and can be committed at any moment.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
from pathlib import Path

from cheapconv.store import atomic_write

#: the folder of the committed results (data only)
RESULTS = Path(__file__).resolve().parents[1] / "results"


def read_records(path: Path) -> list[dict]:
    """Every record of a JSON-lines file, in file order (none when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_by(records: list[dict], key: str) -> dict[str, dict]:
    """The last record of each ``record[key]`` (a later line supersedes an earlier one), in first-seen order."""
    return {r[key]: r for r in records}


def append_record(path: Path, record: dict, *, sort_keys: bool = False) -> None:
    """Append one record as one line. The file is rewritten atomically, so it never holds half a line, under a
    lock file beside it, so two processes of a study (say a second row beside the main run) never drop each
    other's lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = path.read_text() if path.exists() else ""

        def write(tmp: str) -> None:
            Path(tmp).write_text(old + json.dumps(record, sort_keys=sort_keys) + "\n")

        atomic_write(path, write)


def file_sha(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256: which teacher file a run was distilled from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def slug(key: str) -> str:
    """A file name for a record key (the reproduction study names its checkpoints so)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", key).strip("_")
