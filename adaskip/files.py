"""Crash-safe output files (written beside their final path, renamed onto it only once complete) and the two hashes
adaskip names things by."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; when the block ends without error the file is synced and
    renamed onto ``path``, otherwise removed, so an interrupted stage never leaves a half file DVC could take."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(table: Any, path: str | os.PathLike) -> None:
    """A pandas DataFrame as CSV without its index, written atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """``obj`` as indented, key-sorted JSON, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex: what a model file is known by (registered versions, evaluate's key)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def short_hash(obj: Any) -> str:
    """10 hex digits of the SHA-256 of ``obj`` as sorted JSON: the stable name of a set of params (Ray run names,
    a study cell's identity: re-runs find what these names hold)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]
