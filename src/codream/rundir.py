"""The run directory: everything a run leaves behind, written so that a crash loses nothing.

Layout::

    RUN_DIR/
      config.toml          the resolved run configuration (``codream run --config`` reads it back)
      federation.json      the learning loop's resolved configuration, for reference
      metrics.jsonl        one JSON object per finished round, appended and flushed every round
      metrics.csv          the same rounds as a flat table (one column per number, per client accuracy)
      client_private.jsonl in a DP run, per round, the values computed from private data outside the
                           guarantee (`privacy.outputs`); README.md says so
      run.log              the run's log: every line it printed and its codream log records
      privacy_ledger.json  the privacy budget spent so far (secure+dp), rewritten every round
      checkpoint.pt        the federation's full state after the last finished round (``--resume``)
      class_weights.json   conditional method: the run's one class-weight release, kept as it arrives
      dreams.pt            the final dreams and their aggregated soft labels
      summary.json         final numbers; summary.md the same as tables
      plots/               accuracy.png, dreams.png, and epsilon.png for a run with DP

A round is finished when its checkpoint is on disk: the checkpoint is written (atomically) before the
round's metrics line, and resuming drops any metrics line beyond the checkpoint, so metrics and state
never disagree. A write the file system refuses (a full disk, a read-only folder) raises `RunDirError`
naming the file; the files written before it are left as they were.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import CodreamError, ConfigError

__all__ = ["RunDir", "RunDirError", "metrics_csv", "to_jsonable"]

log = logging.getLogger(__name__)

CONFIG = "config.toml"
FEDERATION = "federation.json"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
LOG = "run.log"
LEDGER = "privacy_ledger.json"
CHECKPOINT = "checkpoint.pt"
DREAMS = "dreams.pt"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PLOTS = "plots"


def to_jsonable(value: Any) -> Any:
    """Convert numpy/torch scalars and arrays, tuples, enums and dataclasses into JSON values.

    Non-finite floats become None, so the files are strict JSON that any reader accepts.
    """
    import dataclasses
    import enum

    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return to_jsonable(value.to_dict())
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if hasattr(value, "tolist") and hasattr(value, "detach"):  # torch tensor
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


class RunDirError(CodreamError):
    """A file of the run directory could not be written (full disk, read-only folder, ...)."""


def _write_error(path: Path, exc: OSError) -> RunDirError:
    return RunDirError(f"cannot write {path}: {exc.strerror or exc}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a torn one."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The flat columns of metrics.csv, in order; per-client accuracies follow as accuracy_<client>.
_CSV_COLUMNS = (
    "round", "accuracy_mean", "accuracy_std", "val_accuracy_mean", "participants", "survivors",
    "bytes_sent_per_client", "clipped", "overflowed", "seconds", "epsilon", "delta",
)  # fmt: skip


def metrics_csv(records: Sequence[Mapping[str, Any]]) -> str:
    """The per-round records as CSV: the scalar columns, then one accuracy column per client."""
    clients = max((len(r.get("accuracy") or []) for r in records), default=0)
    header = [*_CSV_COLUMNS, *(f"accuracy_{k}" for k in range(clients))]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in records:
        acc = list(r.get("accuracy") or [])
        row = [_csv_cell(r.get(c)) for c in _CSV_COLUMNS]
        row += [_csv_cell(acc[k]) if k < len(acc) else "" for k in range(clients)]
        writer.writerow(row)
    return buf.getvalue()


def _csv_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


class _RunLogHandler(logging.Handler):
    """Appends records to run.log once its folder holds a run; keeps them in memory until then.

    A log that cannot be written (a full disk) says so once on stderr and stops, so that the run's
    own error, not a logging traceback, is what the user reads.
    """

    def __init__(self, folder: Path, level: int) -> None:
        super().__init__(level)
        self.folder = folder
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._pending: list[str] = []
        self._file: Any = None
        self._broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._broken:
            return
        try:
            line = self.format(record)
            if self._file is None:
                if not (self.folder / CONFIG).is_file():
                    self._pending.append(line)
                    return
                self._file = (self.folder / LOG).open("a", encoding="utf-8")
                for old in self._pending:
                    self._file.write(old + "\n")
                self._pending.clear()
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as exc:
            self._broken = True
            print(f"codream: {self.folder / LOG} cannot be written ({exc.strerror or exc}); "
                  "the run goes on without it", file=sys.stderr)  # fmt: skip

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        super().close()


def _append_line(path: Path, line: str) -> None:
    """Append one line and flush it to disk."""
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise _write_error(path, exc) from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file; a torn line (a crash mid-write) is skipped with a warning."""
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not valid JSON; ignored", path, n)
    return records


class RunDir:
    """Reads and writes one run directory. Create with `create` (new run) or `open` (resume)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.granularity: str | None = None  # a DP run's unit of privacy, once `withhold` is called

    def withhold(self, granularity: str) -> None:
        """From now on keep the values outside the guarantee of `granularity` out of metrics.jsonl.

        They go to client_private.jsonl instead, and README.md says what each file holds.

        Raises:
            ConfigError: for an unknown granularity.
        """
        from .privacy.outputs import PRIVATE_FILE, PRIVATE_README, describe_outside

        values = ", ".join(f"`{v}`" for v in describe_outside(granularity))
        self.granularity = granularity
        text = PRIVATE_README.format(granularity=granularity, private=PRIVATE_FILE, values=values)
        _atomic_write_bytes(self.path / "README.md", text.encode())

    @property
    def private_path(self) -> Path:
        from .privacy.outputs import PRIVATE_FILE

        return self.path / PRIVATE_FILE

    # --- opening -----------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path) -> RunDir:
        """Make a fresh run directory; refuse one that already holds a run.

        Raises:
            ConfigError: the folder holds a run already (resume it or pick another --out).
        """
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise ConfigError(f"--out {p} is a file; give a folder for the run")
        if (p / CONFIG).exists() or (p / METRICS).exists():
            raise ConfigError(
                f"{p} already holds a run; continue it with --resume {p} or choose another --out"
            )
        try:
            (p / PLOTS).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create run directory {p}: {exc.strerror}") from None
        return cls(p)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """Open an existing run directory to resume it.

        Raises:
            ConfigError: the folder is missing or holds no run configuration.
        """
        p = Path(path)
        if not p.is_dir():
            raise ConfigError(f"--resume {p}: no such run directory")
        if not (p / CONFIG).is_file():
            raise ConfigError(
                f"--resume {p}: not a run directory (no {CONFIG}); give the --out of an earlier run"
            )
        (p / PLOTS).mkdir(exist_ok=True)
        return cls(p)

    # --- paths --------------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def metrics_csv_path(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    @property
    def ledger_path(self) -> Path:
        return self.path / LEDGER

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def dreams_path(self) -> Path:
        return self.path / DREAMS

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS

    @property
    def summary_json_path(self) -> Path:
        return self.path / SUMMARY_JSON

    @property
    def summary_md_path(self) -> Path:
        return self.path / SUMMARY_MD

    # --- config -------------------------------------------------------------------------------------

    def write_config(self, toml_text: str, federation: Mapping[str, Any] | None = None) -> None:
        """Write the resolved run configuration (TOML) and, if given, the learning loop's (JSON)."""
        _atomic_write_bytes(self.config_path, toml_text.encode())
        if federation is not None:
            self.write_json(FEDERATION, federation)

    # --- metrics ------------------------------------------------------------------------------------

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one round's record to metrics.jsonl and flush it to disk.

        After `withhold`, the values outside the guarantee go to client_private.jsonl instead (written
        first, so metrics.jsonl never names a round whose private half is missing).
        """
        record = to_jsonable(record)
        if self.granularity is not None:
            from .privacy.outputs import split_record

            record, private = split_record(record, self.granularity)
            _append_line(self.private_path, json.dumps(private, allow_nan=False))
        _append_line(self.metrics_path, json.dumps(record, sort_keys=False, allow_nan=False))
        self._write_csv(_read_jsonl(self.metrics_path))

    def _write_csv(self, records: Sequence[Mapping[str, Any]]) -> None:
        """metrics.csv, rewritten whole from metrics.jsonl's records (which stay the reference)."""
        _atomic_write_bytes(self.metrics_csv_path, metrics_csv(records).encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        """All finished rounds' records, with their values outside the guarantee (client_private.jsonl)
        merged back in; a torn last line (a crash mid-write) is skipped with a warning."""
        records = _read_jsonl(self.metrics_path)
        if not self.private_path.exists():
            return records
        from .privacy.outputs import merge_record

        private = {p.get("round"): p for p in _read_jsonl(self.private_path)}
        return [merge_record(r, private.get(r.get("round"))) for r in records]

    def truncate_metrics(self, rounds_done: int) -> int:
        """Keep only the records of rounds 1..rounds_done (the checkpoint's); return how many were dropped."""
        records = _read_jsonl(self.metrics_path)
        kept = [r for r in records if int(r.get("round", 0)) <= rounds_done]
        dropped = len(records) - len(kept)
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        _atomic_write_bytes(self.metrics_path, text.encode())
        if self.private_path.exists():
            private = [r for r in _read_jsonl(self.private_path) if int(r.get("round", 0)) <= rounds_done]
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in private)
            _atomic_write_bytes(self.private_path, text.encode())
        self._write_csv(kept)
        return dropped

    # --- log ----------------------------------------------------------------------------------------

    @staticmethod
    @contextlib.contextmanager
    def logging_to(
        path: str | Path | None, *, loggers: Sequence[str] = ("codream",), level: int = logging.INFO
    ) -> Iterator[None]:
        """Log `loggers` at `level` and above to PATH/run.log for the duration of the block.

        The folder need not be a run directory yet: records wait in memory until its config.toml
        exists (a run refused before it starts leaves no folder behind), then go to run.log. The
        loggers after the first are children of it that log only here, not to the console (their
        lines were printed already). What the console shows stays its handler's level.
        """
        if path is None:
            yield
            return
        handler = _RunLogHandler(Path(path), level)
        saved = []
        for i, name in enumerate(loggers):
            logger = logging.getLogger(name)
            saved.append((logger, logger.level, logger.propagate))
            if logger.getEffectiveLevel() > level:
                logger.setLevel(level)
            if i > 0:
                logger.propagate = False
            logger.addHandler(handler)
        try:
            yield
        finally:
            for logger, old_level, old_propagate in saved:
                logger.removeHandler(handler)
                logger.setLevel(old_level)
                logger.propagate = old_propagate
            handler.close()

    # --- checkpoint ---------------------------------------------------------------------------------

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Write the run's full state atomically (a crash mid-write keeps the previous checkpoint)."""
        import torch

        buf = io.BytesIO()
        torch.save(dict(state), buf)
        _atomic_write_bytes(self.checkpoint_path, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None when the run stopped before its first round finished.

        The file holds RNG states and optimiser state, not only tensors, so it is loaded with full
        unpickling: resume only run directories you made.
        """
        import torch

        if not self.checkpoint_path.exists():
            return None
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem to the user
            raise ConfigError(
                f"{self.checkpoint_path} cannot be read ({exc}); the run cannot be resumed"
            ) from None

    def save_dreams(self, x: Any, y_soft: Any) -> None:
        import torch

        buf = io.BytesIO()
        torch.save({"x": x.detach().cpu(), "soft_labels": y_soft.detach().cpu()}, buf)
        _atomic_write_bytes(self.dreams_path, buf.getvalue())

    # --- JSON and text ------------------------------------------------------------------------------

    def write_json(self, name: str, value: Any) -> Path:
        path = self.path / name
        _atomic_write_bytes(path, (json.dumps(to_jsonable(value), indent=2, allow_nan=False) + "\n").encode())
        return path

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def write_text(self, name: str, text: str) -> Path:
        path = self.path / name
        _atomic_write_bytes(path, text.encode())
        return path
