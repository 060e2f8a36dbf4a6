"""Partitions of a batch-scoring run, shared by both engines (local and Spark): input
discovery, the partition and run manifests, and the atomic commit.

The unit of work is a *partition*: a directory that holds data files (the input itself
when it is a single file or a flat directory). Each partition is scored into a hidden
``.NAME.inprogress-PID`` directory next to its target and renamed into place when
complete (:func:`commit_partition`), so a killed run leaves no partial output and a re-run
skips partitions whose ``_partition.json`` exists (:func:`partition_done`). Files whose
name starts with ``.`` or ``_`` are skipped on input, as Spark and pyarrow do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomaly_vae.bundle import sha256_file
from anomaly_vae.exceptions import InputNotFoundError, OutputError, SchemaError

from .models import ModelRef

DATA_SUFFIXES = (".csv", ".parquet", ".pq")
PARTITION_MANIFEST = "_partition.json"
RUN_MANIFEST = "_manifest.json"


@dataclass(frozen=True)
class Partition:
    """A unit of work: ``rel`` is its path under the input root ('' for the root itself),
    ``files`` its data files in sorted order."""

    rel: str
    files: tuple[Path, ...]

    def target(self, output: Path) -> Path:
        return output / self.rel if self.rel else output


@dataclass
class RunReport:
    """What a run did; ``to_dict`` is the run manifest."""

    model: ModelRef
    input: str
    output: str
    engine: str
    k: int
    started: str
    partitions: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0
    drift: dict[str, Any] | None = None

    def totals(self) -> dict[str, int]:
        done = [p for p in self.partitions if p.get("rows_out") is not None]
        return {
            "partitions": len(self.partitions),
            "partitions_scored": sum(p["status"] == "scored" for p in self.partitions),
            "partitions_skipped": sum(p["status"] == "skipped" for p in self.partitions),
            "rows_in": sum(int(p["rows_in"]) for p in done),
            "rows_out": sum(int(p["rows_out"]) for p in done),
            "outliers": sum(int(p["outliers"]) for p in done),
        }

    def scored_rows(self) -> int:
        return sum(int(p["rows_out"]) for p in self.partitions if p["status"] == "scored")

    def to_dict(self) -> dict[str, Any]:
        scored = self.scored_rows()
        return {
            "model": self.model.to_dict(),
            "input": self.input,
            "output": self.output,
            "engine": self.engine,
            "k": self.k,
            "started": self.started,
            "duration_s": round(self.duration_s, 3),
            "rows_per_s_scored": round(scored / self.duration_s, 1) if self.duration_s else None,
            **self.totals(),
            **({"drift": self.drift} if self.drift is not None else {}),
            "partitions_detail": self.partitions,
        }


# ------------------------------------------------------------------ input discovery
def expand_dates(text: str, today: dt.date | None = None) -> str:
    """Replace ``{today}`` and ``{yesterday}`` with ISO dates (UTC), so one command line
    scores "yesterday's partition" from cron with no shell date arithmetic."""
    day = today or dt.datetime.now(dt.UTC).date()
    return text.replace("{today}", day.isoformat()).replace(
        "{yesterday}", (day - dt.timedelta(days=1)).isoformat()
    )


def hidden(rel_parts: tuple[str, ...]) -> bool:
    return any(p.startswith((".", "_")) for p in rel_parts)


def discover(input_spec: str) -> tuple[Path, list[Partition]]:
    """Find the data files of ``input_spec`` (file, directory or glob) and group them into
    partitions; returns (root, partitions sorted by path).

    Raises:
        InputNotFoundError: nothing matched (names the input).
        SchemaError: a file has an unsupported suffix, or the layout mixes files at the
            root with partition directories.
    """
    path = Path(input_spec)
    if any(ch in input_spec for ch in "*?["):
        prefix = input_spec[: min(input_spec.find(ch) for ch in "*?[" if ch in input_spec)]
        root = Path(prefix) if prefix.endswith(os.sep) else Path(prefix).parent
        files = [Path(f) for f in sorted(glob.glob(input_spec, recursive=True))]
        files = [f for f in files if f.is_file() and f.suffix.lower() in DATA_SUFFIXES]
    elif path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            msg = f"input {input_spec!r} is not a CSV or Parquet file (suffixes {DATA_SUFFIXES})"
            raise SchemaError(msg)
        return path.parent, [Partition("", (path,))]
    elif path.is_dir():
        root = path
        files = sorted(
            f
            for f in path.rglob("*")
            if f.is_file()
            and f.suffix.lower() in DATA_SUFFIXES
            and not hidden(f.relative_to(path).parts)
        )
    else:
        msg = f"input {input_spec!r} does not exist"
        raise InputNotFoundError(msg)
    if not files:
        msg = f"input {input_spec!r} holds no CSV or Parquet files"
        raise InputNotFoundError(msg)
    groups: dict[str, list[Path]] = {}
    for f in files:
        rel = f.parent.relative_to(root).as_posix()
        groups.setdefault("" if rel == "." else rel, []).append(f)
    if "" in groups and len(groups) > 1:
        msg = (
            f"input {input_spec!r} mixes data files at its top level with partition "
            f"directories ({sorted(groups)[1]!r}, ...); point it at one or the other"
        )
        raise SchemaError(msg)
    return root, [Partition(rel, tuple(fs)) for rel, fs in sorted(groups.items())]


# ------------------------------------------------------------------ manifests and commit
def inprogress_dir(target: Path) -> Path:
    """The hidden directory a partition is written into before it is committed to
    ``target``; stale ones of killed runs are removed by :func:`clear_stale`."""
    return target.parent / f".{target.name}.inprogress-{os.getpid()}"


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path]:
    """The in-progress directory of ``target`` (not created; stale ones of killed runs
    removed first), removed again when the body fails, so nothing partial stays."""
    clear_stale(target)
    tmp = inprogress_dir(target)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finish_partition(tmp: Path, target: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Write ``manifest`` as ``_partition.json`` into ``tmp`` and commit it to ``target``."""
    write_json(tmp / PARTITION_MANIFEST, manifest)
    commit_partition(tmp, target, overwrite)


def partition_manifest(
    part: Partition,
    ref: ModelRef,
    k: int,
    counts: tuple[int, int, int],
    t0: float,
    root: Path,
    tmp: Path,
    outputs: list[Path],
    engine: str | None = None,
) -> dict[str, Any]:
    """The ``_partition.json`` of a scored partition: ``counts`` is (rows in, rows out,
    outliers); paths are relative to the input root and the output root."""
    rows_in, rows_out, outliers = counts
    return {
        "partition": part.rel,
        "status": "scored",
        **({"engine": engine} if engine else {}),
        "model": ref.to_dict(),
        "k": k,
        "rows_in": int(rows_in),
        "rows_out": int(rows_out),
        "outliers": int(outliers),
        "duration_s": round(time.perf_counter() - t0, 3),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "inputs": file_entries(list(part.files), root),
        "outputs": [
            {**e, "path": (Path(part.rel) / e["path"]).as_posix()}
            for e in file_entries(outputs, tmp)
        ],
    }


def file_entries(paths: list[Path], root: Path) -> list[dict[str, Any]]:
    return [
        {
            "path": p.relative_to(root).as_posix(),
            "bytes": p.stat().st_size,
            "sha256": sha256_file(p),
        }
        for p in paths
    ]


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def clear_stale(target: Path) -> None:
    """Remove temporary directories of killed runs for this target."""
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{target.name}.inprogress-*"):
            shutil.rmtree(stale, ignore_errors=True)


def commit_partition(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename a finished temporary directory into place (atomic when ``target`` is new)."""
    try:
        if target.exists():
            if not overwrite:
                msg = f"{target} appeared while this run was writing it (two runs on one output?)"
                raise OutputError(msg)
            keep = [p for p in target.iterdir() if p.name == RUN_MANIFEST]
            for p in keep:  # the run manifest of a root partition survives an overwrite
                os.replace(p, tmp / p.name)
            shutil.rmtree(target)
        os.rename(tmp, target)
    except OutputError:
        raise
    except OSError as exc:
        msg = f"could not move the finished output into {target}: {exc}"
        raise OutputError(msg) from exc


def partition_done(part: Partition, output: Path) -> dict[str, Any] | None:
    """The manifest of a partition already scored into ``output``, or None."""
    manifest = part.target(output) / PARTITION_MANIFEST
    if not manifest.is_file():
        return None
    try:
        doc: dict[str, Any] = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc
