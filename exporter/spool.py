"""The local spool of `cronmon exec`: reports cronmon could not take yet.

One file per report (a start or a finish), written atomically (temporary
file, fsync, rename, fsync of the directory), named so that the names sort
in the order the reports were made:
``<nanoseconds since the epoch>-<pid>-<sequence>-<kind>.json``. A flush
delivers them oldest first and stops at the first one cronmon still does
not take, so a run's start is always delivered before its finish. A flush
holds an exclusive lock (flock on ``.flush.lock`` in the directory): two
flushes never deliver the same file at once. A re-delivery (a report that
landed but whose answer was lost) is harmless: every report carries the
run's id (``?rid=``) and cronmon records a repeated start or finish of a
run id once.

The files hold the ping URL, which is a secret (a ping key or UUID): the
directory is made 0700 and the files 0600.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = ".flush.lock"
_TMP_PREFIX = ".tmp-"
_BAD_SUFFIX = ".bad"
_sequence = itertools.count()


@dataclass(frozen=True)
class Report:
    """One ping to send: a start or a finish of run `rid`."""

    url: str
    kind: str  # "start" or "finish"
    rid: str
    body: bytes | None = None  # a finish's log (POSTed), None for a GET
    created: float = 0.0  # wall clock when the report was made

    def to_json(self) -> str:
        return json.dumps({
            "v": 1, "url": self.url, "kind": self.kind, "rid": self.rid, "created": self.created,
            "body": None if self.body is None else base64.b64encode(self.body).decode("ascii"),
        })

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("url"), str):
            raise ValueError("not a cronmon exec report")
        body = data.get("body")
        return cls(
            url=data["url"], kind=str(data.get("kind", "")), rid=str(data.get("rid", "")),
            body=None if body is None else base64.b64decode(body), created=float(data.get("created") or 0),
        )


def default_dir(env: Mapping[str, str] = os.environ) -> Path:
    """CRONMON_SPOOL_DIR, else $XDG_STATE_HOME/cronmon/spool, else
    ~/.local/state/cronmon/spool."""
    if env.get("CRONMON_SPOOL_DIR"):
        return Path(env["CRONMON_SPOOL_DIR"])
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "cronmon" / "spool"


class Spool:
    def __init__(self, directory: Path):
        self.directory = directory

    def add(self, report: Report) -> Path:
        """Write one report durably; its path. Raises OSError."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}-{report.kind}.json"
        final = self.directory / name
        temporary = self.directory / f"{_TMP_PREFIX}{name}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(report.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        self._sync_directory()
        return final

    def pending(self) -> list[Path]:
        """The spooled reports, oldest first (none if the directory is missing)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [self.directory / n for n in sorted(names) if n.endswith(".json") and not n.startswith(".")]

    @staticmethod
    def load(path: Path) -> Report:
        return Report.from_json(path.read_text(encoding="utf-8"))

    def remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sync_directory()

    def set_aside(self, path: Path) -> Path:
        """Rename an unreadable report out of the queue (kept for a human)."""
        target = path.with_name(path.name + _BAD_SUFFIX)
        os.rename(path, target)
        return target

    @contextlib.contextmanager
    def locked(self, wait: float) -> Iterator[bool]:
        """Hold the flush lock; yields False if another process held it for
        all of `wait` seconds (0: do not wait)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.05)
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
