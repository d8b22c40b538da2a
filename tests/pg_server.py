"""A throw-away PostgreSQL server for tests: the Debian package's binaries, a temporary folder.

`PostgresServer().start()` runs `initdb` in a fresh folder under the system temp directory,
starts `postgres` with `pg_ctl` on a free TCP port of 127.0.0.1 (its unix socket goes in the
same folder, never /var/run/postgresql), creates one database and gives its URL,
``postgresql://lifelong@127.0.0.1:PORT/lifelong_test`` (trust authentication: only this machine
can reach it). `stop()` stops the server and removes the folder. Nothing is left running and
nothing outside the folder is touched; the Debian package's own cluster (`pg_lsclusters`) is
neither used nor started.

PostgreSQL refuses to run as root. As root (CI runs as root) the server therefore runs as an
unprivileged user, ``postgres`` (created by the Debian package) or else ``nobody``, switched
to with `runuser` (or `su`); the folder belongs to that user. Any other user runs it directly.

Binaries: ``LIFELONG_PG_BIN`` (a folder holding initdb and pg_ctl) if set, else the newest
``/usr/lib/postgresql/<version>/bin``, else ``initdb``/``pg_ctl`` on PATH. `Unavailable` says
in one line why a server cannot be started and how to fix it; the `postgres_url` fixture in
conftest.py turns it into a skip.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL_HINT = "install the server binaries with 'apt-get install postgresql' (Debian/Ubuntu)"
DB_USER = "lifelong"
DB_NAME = "lifelong_test"
RUN_AS = ("postgres", "nobody")  # tried in this order when running as root


class Unavailable(RuntimeError):
    """A PostgreSQL server cannot be started here; the message says why and how to fix it."""


def find_bin_dir() -> Path:
    """The folder holding `initdb`, `pg_ctl` and `postgres` (see the module docstring)."""
    needed = ("initdb", "pg_ctl", "postgres")
    env = os.environ.get("LIFELONG_PG_BIN")
    candidates: list[Path] = []
    if env:
        candidates.append(Path(env))
    else:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                          key=lambda p: [int(s) for s in re.findall(r"\d+", p.parent.name)] or [0])
        candidates += reversed(versions)
        on_path = shutil.which("initdb")
        if on_path:  # /usr/local/bin/initdb may be a symlink into /usr/lib/postgresql/N/bin
            candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in needed):
            return folder
    where = f"LIFELONG_PG_BIN={env}" if env else "/usr/lib/postgresql/*/bin or PATH"
    raise Unavailable(f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) in {where}: "
                      f"{INSTALL_HINT}")


def _run_as_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as, or None to run it as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in RUN_AS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise Unavailable(f"running as root, and PostgreSQL refuses root, but none of the users "
                      f"{', '.join(RUN_AS)} exists to run it as: create one (the Debian package "
                      f"'postgresql' creates 'postgres') or run the tests as a normal user")


def _switch_prefix(user: pwd.struct_passwd | None) -> list[str]:
    if user is None:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--"]
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                "--"]
    raise Unavailable("running as root, and PostgreSQL refuses root, but neither 'runuser' nor "
                      "'setpriv' (util-linux) is there to switch user: install util-linux or run "
                      "the tests as a normal user")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (another process may take it; start()
    retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One server in its own temporary folder; `start()` returns its URL, `stop()` removes all."""

    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self.folder: Path | None = None
        self.port: int | None = None
        self.url: str | None = None
        self._bin: Path | None = None
        self._user: pwd.struct_passwd | None = None
        self._prefix: list[str] = []

    @property
    def socket_dir(self) -> Path:
        assert self.folder is not None
        return self.folder / "socket"

    @property
    def data_dir(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a program as the server's user in the folder; `check`: raise `Unavailable` with
        its message (and the server log's tail) if it fails."""
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        done = subprocess.run([*self._prefix, *args], cwd=self.folder, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=self.timeout_s)
        if check and done.returncode != 0:
            log = self.folder / "server.log" if self.folder else None
            tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            raise Unavailable(f"'{Path(args[0]).name}' failed (exit {done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[-1500:]}"
                              + (f"\nserver log: {tail}" if tail else ""))
        return done

    def start(self) -> str:
        self._bin = find_bin_dir()
        self._user = _run_as_user()
        self._prefix = _switch_prefix(self._user)
        # The system temp dir, not pytest's tmp_path: /tmp/pytest-of-root is private to root and
        # the server's user could not enter it.
        self.folder = Path(tempfile.mkdtemp(prefix="lifelong-pg-"))
        try:
            self.socket_dir.mkdir()
            if self._user is not None:
                for p in (self.folder, self.socket_dir):
                    os.chown(p, self._user.pw_uid, self._user.pw_gid)
                probe = self._run("test", "-w", str(self.folder), check=False)
                if probe.returncode != 0:
                    raise Unavailable(f"user '{self._user.pw_name}' cannot write the temporary "
                                      f"folder {self.folder}: point TMPDIR at a folder every "
                                      f"user can enter (e.g. /tmp)")
            self._run(str(self._bin / "initdb"), "-D", str(self.data_dir), "-U", DB_USER,
                      "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync")
            for attempt in range(3):  # the free port may be taken between probe and start
                self.port = free_port()
                opts = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                        f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
                done = self._run(str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-l",
                                 str(self.folder / "server.log"), "-o", opts, "-w", "-t",
                                 str(int(self.timeout_s)), "start", check=attempt == 2)
                if done.returncode == 0:
                    break
            self._createdb()
        except BaseException:
            self.stop()
            raise
        self.url = f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"
        return self.url

    def _createdb(self) -> None:
        createdb = self._bin / "createdb"
        if os.access(createdb, os.X_OK):
            self._run(str(createdb), "-h", str(self.socket_dir), "-p", str(self.port), "-U",
                      DB_USER, DB_NAME)
            return
        psql = self._bin / "psql"  # some installs ship the server without the client programs
        self._run(str(psql), "-h", str(self.socket_dir), "-p", str(self.port), "-U", DB_USER,
                  "-d", "postgres", "-c", f"CREATE DATABASE {DB_NAME}")

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the server (fast shutdown; SIGKILL to its postmaster if that fails) and remove
        the folder. Safe to call twice or after a failed start."""
        if self.folder is None:
            return
        if self._bin is not None and (self.data_dir / "postmaster.pid").exists():
            try:
                done = self._run(str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                                 "-w", "-t", "30", "stop", check=False)
                stopped = done.returncode == 0
            except subprocess.TimeoutExpired:
                stopped = False
            pid = None if stopped else self._postmaster_pid()
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                    time.sleep(0.5)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None
        self.url = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
