"""Real servers of the production profile (docs/production.md) for tests: a PostgreSQL cluster of its own,
a local S3 (moto's server mode), `mlflow server` on PostgreSQL with artifacts in S3, and Prefect's server
on PostgreSQL. Each runs as a subprocess on 127.0.0.1 on a free port, in its own process group, and is
stopped (the whole group) and its files removed at teardown.

Nothing here is mocked: the servers are the ones a production install runs, started with the same
command lines and environment variables as the runbook."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

HOST = "127.0.0.1"
# moto accepts any credentials; these are the names every AWS client reads
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "imgcls-test",
    "AWS_SECRET_ACCESS_KEY": "imgcls-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    """The folder of pg_ctl/initdb: PATH first, then Debian's /usr/lib/postgresql/<major>/bin (newest)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]), reverse=True
    )
    return Path(candidates[0]).parent if candidates else None


def missing_requirements() -> str | None:
    """Why the production-profile servers cannot run here, or None when they can."""
    if postgres_bindir() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin: "
            "install Debian's postgresql-15 (.ci/run does)"
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL refuses to run as root"
    for module in ("moto", "boto3", "psycopg", "asyncpg"):
        try:
            __import__(module)
        except ImportError:
            return f"python package {module!r} missing: pip install -c constraints.txt -e '.[test]'"
    return None


class ServerError(AssertionError):
    pass


@dataclass
class Proc:
    """A server subprocess in its own process group, with its log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except Exception:  # not listening yet, or not answering sensibly yet
                pass
            if self.popen.poll() is not None:
                raise ServerError(f"{self.name} exited ({self.popen.returncode}) before it was ready:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)  # the server and the workers it started
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        # workers left behind in the group (uvicorn's, say) go too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def spawn(name: str, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
    fh = open(log, "wb")
    try:
        popen = subprocess.Popen(
            args,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
    finally:
        fh.close()  # the child holds its own copy
    return Proc(name, popen, log)


def http_ok(url: str, **kwargs) -> Callable[[], bool]:
    return lambda: requests.get(url, timeout=2, **kwargs).ok


# --------------------------------------------------------------------------------------------- PostgreSQL
@dataclass
class Postgres:
    port: int
    user: str
    password: str
    datadir: Path
    log: Path

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}:{self.password}@{HOST}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(host=HOST, port=self.port, user=self.user, password=self.password, dbname=database)

    def query(self, database: str, sql: str, args: tuple = ()) -> list[tuple]:
        with self.connect(database) as conn, conn.cursor() as cur:  # psycopg 3: closed at exit
            cur.execute(sql, args)
            return cur.fetchall()

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            conn.execute(f'CREATE DATABASE "{name}"')


def _as_postgres_user(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; Debian's package makes the `postgres` system user
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextlib.contextmanager
def postgres_cluster(databases: tuple[str, ...]) -> Iterator[Postgres]:
    """A fresh cluster (initdb) in a temporary folder, password (SCRAM) auth over TCP on 127.0.0.1 only,
    with `databases` created; stopped and removed at exit. fsync is off: a test cluster, not a template."""
    bindir = postgres_bindir()
    assert bindir is not None, missing_requirements()
    base = Path(tempfile.mkdtemp(prefix="imgcls-pg-"))  # outside pytest's tmp_path: root-only (0700) folders
    datadir, log, pwfile = base / "data", base / "postgres.log", base / "pw"
    password = secrets.token_urlsafe(16)
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    pwfile.chmod(0o600)
    port = free_port()
    started = False
    try:
        subprocess.run(
            _as_postgres_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(datadir),
                    "-U",
                    "imgcls",
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=peer",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
        pwfile.unlink()
        subprocess.run(
            _as_postgres_user(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(datadir),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "start",
                    "-o",
                    f"-p {port} -c listen_addresses={HOST} -k {base} -c fsync=off -c synchronous_commit=off "
                    f"-c full_page_writes=off -c max_connections=100",
                ]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
        started = True
        pg = Postgres(port=port, user="imgcls", password=password, datadir=datadir, log=log)
        for name in databases:
            pg.create_database(name)
        yield pg
    except subprocess.CalledProcessError as exc:
        raise ServerError(f"{exc.cmd[:6]} failed: {exc.stderr}\n{log.read_text() if log.exists() else ''}") from exc
    finally:
        if started:
            subprocess.run(
                _as_postgres_user([str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop"]),
                capture_output=True,
            )
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- local S3
@dataclass
class S3:
    endpoint: str
    env: dict[str, str] = field(default_factory=lambda: dict(AWS_ENV))

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@contextlib.contextmanager
def s3_server(workdir: Path, buckets: tuple[str, ...]) -> Iterator[S3]:
    """moto's S3 in server mode (`python -m moto.server`), with `buckets` made."""
    port = free_port()
    proc = spawn(
        "moto_server",
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        workdir / "moto.log",
        env={**os.environ, **AWS_ENV},
    )
    try:
        s3 = S3(endpoint=f"http://{HOST}:{port}")
        proc.wait_until(lambda: s3.client().list_buckets() is not None, timeout=60)
        for bucket in buckets:
            s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        proc.stop()


# ------------------------------------------------------------------------------------------ MLflow server
@contextlib.contextmanager
def mlflow_server(workdir: Path, backend_uri: str, artifacts: str, s3: S3) -> Iterator[tuple[str, Proc]]:
    """`mlflow server` with its tracking + registry store in `backend_uri` and proxied artifacts in
    `artifacts` (s3://...): clients upload and download through the server, so only it holds S3 keys."""
    port = free_port()
    env = {**os.environ, **s3.env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = spawn(
        "mlflow server",
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            artifacts,
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        workdir / "mlflow-server.log",
        env=env,
        cwd=workdir,
    )
    url = f"http://{HOST}:{port}"
    try:
        yield url, proc
    finally:
        proc.stop()


# ----------------------------------------------------------------------------------------- Prefect server
@contextlib.contextmanager
def prefect_server(workdir: Path, database_url: str, auth: str) -> Iterator[tuple[str, Proc]]:
    """`prefect server start` on `database_url` (postgresql+asyncpg://...), basic auth `auth` (user:pass);
    its services run (task runs reach the database through the task-run recorder service), but for the
    scheduler and late-run marker, which only deployments need; no UI."""
    port = free_port()
    home = workdir / "prefect-server-home"
    home.mkdir()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        env.pop(name, None)
    proc = spawn(
        "prefect server",
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            HOST,
            "--port",
            str(port),
            "--no-scheduler",
            "--no-late-runs",
            "--no-ui",
            "--analytics-off",
        ],
        workdir / "prefect-server.log",
        env=env,
        cwd=workdir,
    )
    try:
        yield f"http://{HOST}:{port}/api", proc
    finally:
        proc.stop()
