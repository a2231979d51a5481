"""Claims: how search workers that share one study split its budget without evaluating an arch twice.

Before a worker evaluates an arch it claims the arch's canonical key (``Problem.key``) in a table
beside optuna's, in the same database: one row per key (a primary key, so two workers cannot
claim one sub-model) holding a slot number (unique, below the study's budget, so the workers
together evaluate exactly the budget), the arch, the worker, a heartbeat and whether the trial is
recorded. The database arbitrates every race; nothing relies on the workers' clocks, which may
differ between machines: heartbeats and their age are the database server's time.

A worker renews its claim's heartbeat while it evaluates. A claim whose heartbeat is older than
the timeout belongs to a worker that died: one other worker takes it over (an atomic update that
only one can win), and evaluates the arch again unless its trial was recorded before the death.

Any SQL database optuna stores studies in works (PostgreSQL, MySQL, SQLite on one machine). A
study in optuna's journal file on a shared file system (a cluster without a database) gets
``FileClaims``: the same claims as files created exclusively beside the journal, heartbeats as
their modification times (the file server's clock).

>>> claims = Claims("sqlite://", "demo")   # in memory, for the example
>>> claims.claim("k1", {"a": 1}, budget=2), claims.claim("k1", {"a": 1}, budget=2)
(True, False)
>>> claims.claim("k2", {"a": 2}, budget=2), claims.claim("k3", {"a": 3}, budget=2)
(True, None)
>>> claims.finish("k1"); claims.pending()
1
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path

JOURNAL = "journal:"  # onefit.search.study's name for a study kept in optuna's journal file
NOW = {  # the database server's clock, in seconds since 1970
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())",
    "sqlite": "(julianday('now') - 2440587.5) * 86400.0",
    "mysql": "UNIX_TIMESTAMP(NOW(6))",
    "mariadb": "UNIX_TIMESTAMP(NOW(6))",
}


class _ClaimsBase:
    """What both kinds of claims do the same way; each says ``claim``, ``finish``, ``beat``."""

    def _key(self, key: str) -> str:
        """A canonical key as a fixed-length name (a primary key, a file name)."""
        return hashlib.sha256(key.encode()).hexdigest()

    def adopt(self, key: str, arch: dict) -> None:
        """Count a trial recorded in the study as a finished claim: one recorded before the workers
        shared the study, or by a worker that died before it could say so."""
        self.claim(key, arch, budget=2 ** 31)
        self.finish(key)

    def heartbeat(self, key: str):
        """A context that renews ``key``'s heartbeat from a thread while the evaluation runs."""
        return _Heartbeat(self, key)


class Claims(_ClaimsBase):
    """The claims of one study in the database at ``url`` (a SQLAlchemy URL, as optuna's)."""

    def __init__(self, url: str, study: str, *, timeout_s: float = 120.0):
        import sqlalchemy as sa

        if timeout_s <= 0:
            raise ValueError(f"claim timeout must be > 0 seconds, got {timeout_s}")
        self.study, self.timeout_s, self.worker = study, timeout_s, uuid.uuid4().hex[:12]
        self.engine = sa.create_engine(url, poolclass=sa.pool.StaticPool if url == "sqlite://" else None)
        if self.engine.dialect.name not in NOW:
            raise ValueError(f"shared search workers need PostgreSQL, MySQL or SQLite; got {self.engine.dialect.name}")
        self._now = sa.literal_column(NOW[self.engine.dialect.name])
        meta = sa.MetaData()
        self.table = sa.Table(
            "onefit_claims", meta,
            sa.Column("study", sa.String(255), primary_key=True),
            sa.Column("key", sa.String(64), primary_key=True),  # sha256 of the canonical key
            sa.Column("slot", sa.Integer, nullable=False),
            sa.Column("arch", sa.Text, nullable=False),
            sa.Column("worker", sa.String(32), nullable=False),
            sa.Column("heartbeat", sa.Float, nullable=False),
            sa.Column("takeovers", sa.Integer, nullable=False, default=0),
            sa.Column("done", sa.Boolean, nullable=False, default=False),
            sa.UniqueConstraint("study", "slot", name="onefit_claims_slot"))
        self.workers = sa.Table(
            "onefit_workers", meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("study", sa.String(255), nullable=False),
            sa.Column("worker", sa.String(32), nullable=False))
        for attempt in range(8):  # workers starting together race to create the tables
            try:
                meta.create_all(self.engine, checkfirst=True)
                break
            except sa.exc.DBAPIError:
                if attempt == 7:
                    raise
                time.sleep(0.05 * 2 ** attempt)

    def register(self) -> int:
        """This worker's number in the study (1, 2, ...): what its searcher is reseeded with."""
        import sqlalchemy as sa

        with self.engine.begin() as c:
            c.execute(self.workers.insert().values(study=self.study, worker=self.worker))
            return c.execute(sa.select(sa.func.count()).select_from(self.workers)
                             .where(self.workers.c.study == self.study)).scalar_one()

    def claim(self, key: str, arch: dict, budget: int) -> bool | None:
        """Claim ``key`` for this worker: True when it is now ours, False when another worker has
        it, None when the study's ``budget`` is spent (every slot below it is claimed)."""
        import sqlalchemy as sa

        row = self._key(key)
        while True:
            try:
                with self.engine.begin() as c:
                    if c.execute(sa.select(self.table.c.key).where(self.table.c.study == self.study,
                                                                   self.table.c.key == row)).first():
                        return False
                    slot = self.claimed(c)
                    if slot >= budget:
                        return None
                    c.execute(self.table.insert().values(
                        study=self.study, key=row, slot=slot, arch=json.dumps(arch), worker=self.worker,
                        heartbeat=self._now, takeovers=0, done=False))
                return True
            except sa.exc.IntegrityError:
                continue  # another worker took this key or this slot first: look again

    def claimed(self, connection=None) -> int:
        """How many slots of the study are claimed."""
        import sqlalchemy as sa

        query = sa.select(sa.func.count()).select_from(self.table).where(self.table.c.study == self.study)
        if connection is not None:
            return connection.execute(query).scalar_one()
        with self.engine.connect() as c:
            return c.execute(query).scalar_one()

    def beat(self, key: str) -> None:
        import sqlalchemy as sa

        with self.engine.begin() as c:
            c.execute(sa.update(self.table).where(self.table.c.study == self.study, self.table.c.key == self._key(key),
                                                  self.table.c.worker == self.worker).values(heartbeat=self._now))

    def finish(self, key: str) -> None:
        """The claim's trial is recorded in the study."""
        import sqlalchemy as sa

        with self.engine.begin() as c:
            c.execute(sa.update(self.table).where(self.table.c.study == self.study,
                                                  self.table.c.key == self._key(key)).values(done=True))

    def pending(self) -> int:
        """Claims whose trial is not recorded yet (being evaluated, or left by a dead worker)."""
        import sqlalchemy as sa

        with self.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(self.table).where(
                self.table.c.study == self.study, self.table.c.done.is_(False))).scalar_one()

    def take_over(self) -> dict | None:
        """The arch of one claim whose worker stopped beating for longer than the timeout, now
        this worker's (only one worker wins each), or None when there is none."""
        import sqlalchemy as sa

        stale = (self.table.c.study == self.study) & self.table.c.done.is_(False) \
            & (self.table.c.heartbeat < self._now - self.timeout_s)
        with self.engine.connect() as c:
            rows = c.execute(sa.select(self.table.c.key, self.table.c.worker, self.table.c.arch).where(stale)).all()
        for row, worker, arch in rows:
            with self.engine.begin() as c:
                won = c.execute(sa.update(self.table).where(stale, self.table.c.key == row,
                                                            self.table.c.worker == worker)
                                .values(worker=self.worker, heartbeat=self._now,
                                        takeovers=self.table.c.takeovers + 1)).rowcount
            if won == 1:
                return json.loads(arch)
        return None

    def takeovers(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            return c.execute(sa.select(sa.func.coalesce(sa.func.sum(self.table.c.takeovers), 0)).where(
                self.table.c.study == self.study)).scalar_one()


class _Heartbeat:
    def __init__(self, claims: _ClaimsBase, key: str):
        self.claims, self.key, self.stop = claims, key, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.claims.timeout_s / 4):
            try:
                self.claims.beat(self.key)
            except Exception:  # a missed beat is retried; a dead database ends the evaluation anyway
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def claims_for(url: str, study: str, *, timeout_s: float = 120.0):
    """The claims that suit the study's storage: a journal file's, or a database's."""
    if url.startswith(JOURNAL):
        return FileClaims(Path(url[len(JOURNAL):] + ".claims") / study, timeout_s=timeout_s)
    return Claims(url, study, timeout_s=timeout_s)


class FileClaims(_ClaimsBase):
    """``Claims`` kept as files in ``folder`` on a file system every worker mounts. Each claim,
    slot, takeover and finish is one file created with O_CREAT | O_EXCL, which only one process
    can win (NFS v3 and later honour it)."""

    def __init__(self, folder: str | Path, *, timeout_s: float = 120.0):
        if timeout_s <= 0:
            raise ValueError(f"claim timeout must be > 0 seconds, got {timeout_s}")
        self.folder, self.timeout_s, self.worker = Path(folder), timeout_s, uuid.uuid4().hex[:12]
        for sub in ("keys", "slots", "done", "takeovers", "workers"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    def _create(self, path: Path, text: str = "") -> bool:
        """Create ``path``; False when it exists (another process made it first)."""
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True

    def _count(self, sub: str) -> int:
        return sum(1 for _ in (self.folder / sub).iterdir())

    def register(self) -> int:
        while True:
            number = self._count("workers") + 1
            if self._create(self.folder / "workers" / str(number), self.worker):
                return number

    def claim(self, key: str, arch: dict, budget: int) -> bool | None:
        row = self._key(key)
        if (self.folder / "keys" / row).exists():
            return False
        if self.claimed() >= budget:
            return None
        if not self._create(self.folder / "keys" / row, json.dumps({"arch": arch, "worker": self.worker})):
            return False
        while (slot := self.claimed()) < budget:  # the key is ours: now one slot below the budget
            if self._create(self.folder / "slots" / str(slot), row):
                return True
        (self.folder / "keys" / row).unlink()  # the budget filled up meanwhile: let the key go
        return None

    def claimed(self) -> int:
        return self._count("slots")

    def beat(self, key: str) -> None:
        os.utime(self.folder / "keys" / self._key(key))

    def finish(self, key: str) -> None:
        self._create(self.folder / "done" / self._key(key))

    def _pending(self) -> list[Path]:
        done = {p.name for p in (self.folder / "done").iterdir()}
        return [p for p in (self.folder / "keys").iterdir() if p.name not in done]

    def pending(self) -> int:
        return len(self._pending())

    def _now(self) -> float:
        """The file server's clock: the modification time of a file touched now."""
        probe = self.folder / f"clock-{self.worker}"
        probe.touch()
        return probe.stat().st_mtime

    def take_over(self) -> dict | None:
        now = self._now()
        for path in self._pending():
            takeovers = self._takeovers_of(path.name)  # counted first: a takeover made after this is seen below
            try:  # a takeover's file is as fresh as a beat
                beat = max([path.stat().st_mtime, *(t.stat().st_mtime for t in takeovers)])
            except FileNotFoundError:  # let go meanwhile (the budget filled up)
                continue
            if now - beat > self.timeout_s and self._create(
                    self.folder / "takeovers" / f"{path.name}.{len(takeovers) + 1}", self.worker):
                os.utime(path)
                return json.loads(path.read_text())["arch"]
        return None

    def _takeovers_of(self, row: str) -> list[Path]:
        return [p for p in (self.folder / "takeovers").iterdir() if p.name.split(".")[0] == row]

    def takeovers(self) -> int:
        return self._count("takeovers")
