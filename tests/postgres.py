"""A throw-away PostgreSQL server for the tests and ``bench/scale.py``: Debian's ``postgresql``
binaries, ``initdb`` into a temporary folder as an unprivileged user (root may not run it), a
server on 127.0.0.1 and a free port with password (scram) authentication, stopped at the end.

    with server() as url:   # postgresql+psycopg://onefit:...@127.0.0.1:PORT/postgres
        ...
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER, PASSWORD = "onefit", "onefit-test"


class Unavailable(RuntimeError):
    """PostgreSQL or its driver is not installed here."""


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise Unavailable(f"{name} not found: install Debian's postgresql package (apt-get install postgresql)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_unprivileged() -> dict:
    """subprocess arguments that run a command as 'nobody' when this process is root."""
    if os.geteuid() != 0:
        return {}
    return {"user": "nobody", "group": "nogroup" if _group_exists("nogroup") else "nobody"}


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


@contextlib.contextmanager
def server():
    """Start a server; yield its URL; stop it and remove its files."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("the psycopg driver is not installed (pip install 'onefit[postgresql]')") from None
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="onefit-pg-"))
    os.chmod(root, 0o777)
    data, pwfile, port = root / "data", root / "pw", _free_port()
    pwfile.write_text(PASSWORD)
    os.chmod(pwfile, 0o644)
    who = _as_unprivileged()
    try:
        subprocess.run([initdb, "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                        "--no-sync"], check=True, capture_output=True, **who)
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=100"
        subprocess.run([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                       check=True, capture_output=True, **who)
        url = f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres"
        yield url
    except subprocess.CalledProcessError as err:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        raise Unavailable(f"could not start PostgreSQL: {err.stderr.decode(errors='replace')[-800:]} {log[-800:]}") from err
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, **who)
            time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)
