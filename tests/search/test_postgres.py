"""PostgreSQL: two ``torchslim search`` workers share one study on a real server; one is killed
with SIGKILL mid-trial and the command is rerun; every trial is recorded exactly once.

The fixture starts a throw-away server (initdb, pg_ctl, createdb) in a temporary directory on
a free port. Without the PostgreSQL binaries the test skips, unless TORCHSLIM_REQUIRE_POSTGRES=1
(CI sets it after installing Debian's postgresql package), in which case it fails.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from _killresume import check_kill_resume, run_kill_resume

REQUIRED = os.environ.get("TORCHSLIM_REQUIRE_POSTGRES") == "1"


def _unavailable(reason: str) -> None:
    message = (
        f"{reason}; the PostgreSQL test needs a server's binaries (apt-get install postgresql)"
    )
    if REQUIRED:
        pytest.fail(f"{message}, and TORCHSLIM_REQUIRE_POSTGRES=1 requires it")
    pytest.skip(message)


def _bindir() -> Path | None:
    """Debian keeps initdb and pg_ctl in /usr/lib/postgresql/VERSION/bin, off PATH."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if all((Path(d) / tool).exists() for tool in ("initdb", "pg_ctl", "createdb")):
            return Path(d)
    found = [shutil.which(tool) for tool in ("initdb", "pg_ctl", "createdb")]
    if all(found):
        return Path(os.path.realpath(found[0])).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _bindir()
    if bindir is None:
        _unavailable("initdb/pg_ctl/createdb not found in /usr/lib/postgresql/*/bin or on PATH")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed (pip install 'torchslim[search]')")
    base = Path(tempfile.mkdtemp(prefix="torchslim-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as another user
        user = next(u for u in ("postgres", "nobody") if _has_user(u))
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    port = _free_port()
    data = base / "data"

    def run(*cmd: str) -> None:
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}")

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-N")
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60",
            "-o", options, "start")  # fmt: skip
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                "torchslim")  # fmt: skip
            yield f"postgresql://postgres@127.0.0.1:{port}/torchslim"
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_postgres_two_workers_kill_and_resume(postgres_url, tmp_path):
    result = run_kill_resume(postgres_url, tmp_path, budget=16)
    check_kill_resume(result, budget=16)
