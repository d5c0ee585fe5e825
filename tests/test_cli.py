"""The command line, end to end: `python -m s3fast` in a subprocess against SeaweedFS (and
moto, which keeps keys SeaweedFS refuses, for the path-safety checks)."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import pty
import shutil
import struct
import subprocess
import sys
import termios

import pytest

from s3fast import cli
from s3fast.cli import safe_local_path
from s3fast.errors import MetaflowS3Exception
from s3fast.testing import READER

from .conftest import Server


def run(
    env: dict[str, str], *args: str, cwd: pathlib.Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "s3fast", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        timeout=120,
    )


def ok(env: dict[str, str], *args: str, cwd: pathlib.Path | None = None) -> str:
    done = run(env, *args, cwd=cwd)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def jsonl(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def one_line_error(done: subprocess.CompletedProcess[bytes]) -> str:
    err = done.stderr.decode()
    assert "Traceback" not in err, err
    assert err.startswith("s3fast: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> pathlib.Path:
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "b.csv").write_bytes(b"1,2,3\n")
    (src / "sub" / "c.txt").write_bytes(b"gamma" * 1000)
    (src / "sub" / "deep" / "d.bin").write_bytes(os.urandom(300_000))
    return src


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_cp_ls_info_cat_rm_round_trip(
    seaweed: Server, seaweed_bucket: str, tree: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    env = seaweed.env()
    root = f"s3://{seaweed_bucket}/cli"
    # local -> S3, recursive
    up = jsonl(ok(env, "cp", "--recursive", "--json", str(tree), root + "/"))
    assert sorted(r["dst"] for r in up) == [
        f"{root}/{k}" for k in ["a.txt", "b.csv", "sub/c.txt", "sub/deep/d.bin"]
    ]
    # local wildcard -> S3 prefix
    ok(env, "cp", "-q", str(tree / "*.txt"), f"s3://{seaweed_bucket}/globbed/")
    # ls: one level, then everything
    listing = ok(env, "ls", root)
    assert f"{root}/a.txt" in listing and f"DIR  {root}/sub/" in listing
    everything = jsonl(ok(env, "ls", "--recursive", "--json", root))
    assert {r["url"]: r["size"] for r in everything} == {
        f"{root}/a.txt": 5,
        f"{root}/b.csv": 6,
        f"{root}/sub/c.txt": 5000,
        f"{root}/sub/deep/d.bin": 300_000,
    }
    assert [r["url"] for r in jsonl(ok(env, "ls", "--json", f"s3://{seaweed_bucket}/globbed"))] == [
        f"s3://{seaweed_bucket}/globbed/a.txt"
    ]
    # info and cat
    (info,) = jsonl(ok(env, "info", "--json", f"{root}/sub/c.txt"))
    assert info["size"] == 5000 and info["etag"]
    assert "size:" in ok(env, "info", f"{root}/sub/c.txt")
    done = run(env, "cat", f"{root}/sub/deep/d.bin")
    assert done.returncode == 0 and done.stdout == (tree / "sub" / "deep" / "d.bin").read_bytes()
    # S3 -> local: recursive, wildcard, single file
    down = tmp_path / "down"
    ok(env, "cp", "-r", root, str(down))
    assert _files(down) == _files(tree)
    ok(env, "cp", f"{root}/sub/*.txt", str(tmp_path / "wild") + "/")
    assert _files(tmp_path / "wild") == {"c.txt": b"gamma" * 1000}
    ok(env, "cp", f"{root}/a.txt", str(tmp_path / "single.txt"))
    assert (tmp_path / "single.txt").read_bytes() == b"alpha"
    assert not [p for p in tmp_path.rglob("s3fast.*")], "temp dirs left in the destination"
    # S3 -> S3, server-side
    copied = jsonl(ok(env, "cp", "-r", "--json", f"{root}/sub", f"s3://{seaweed_bucket}/copy"))
    assert sorted(r["dst"] for r in copied) == [
        f"s3://{seaweed_bucket}/copy/c.txt",
        f"s3://{seaweed_bucket}/copy/deep/d.bin",
    ]
    assert ok(env, "cat", f"s3://{seaweed_bucket}/copy/c.txt") == "gamma" * 1000
    # rm: one key, then a prefix (its sibling "cli2" survives)
    ok(env, "cp", str(tree / "a.txt"), f"s3://{seaweed_bucket}/cli2")
    ok(env, "rm", f"{root}/a.txt")
    assert f"{root}/a.txt" not in ok(env, "ls", "-r", root)
    deleted = jsonl(ok(env, "rm", "-r", "--json", root))
    assert len(deleted) == 3
    assert ok(env, "ls", "-r", root) == ""
    assert ok(env, "cat", f"s3://{seaweed_bucket}/cli2") == "alpha"


def test_exit_codes_and_one_line_errors(
    seaweed: Server, seaweed_bucket: str, tmp_path: pathlib.Path
) -> None:
    env = seaweed.env()
    root = f"s3://{seaweed_bucket}"
    ok(env, "cp", __file__, f"{root}/k")
    cases = [
        (3, ("cat", f"{root}/missing")),
        (3, ("cp", str(tmp_path / "nope.txt"), f"{root}/x")),
        (3, ("cp", f"{root}/missing", str(tmp_path))),
        (3, ("ls", "s3://no-such-bucket-s3fast/x")),
        (2, ()),
        (2, ("frobnicate",)),
        (2, ("cp", "a", "b")),
        (2, ("cat", "not-a-url")),
        (2, ("cp", str(tmp_path), f"{root}/dir")),  # a directory without --recursive
    ]
    for code, args in cases:
        done = run(env, *args)
        assert done.returncode == code, (args, done.stderr.decode())
        one_line_error(done)
    denied = run({**env, **READER.env()}, "rm", f"{root}/k")
    assert denied.returncode == 4, denied.stderr.decode()
    assert "AccessDenied" in one_line_error(denied)
    other = run(
        {**env, "S3FAST_MAX_ATTEMPTS": "1"},
        "cat",
        "--endpoint-url",
        "http://127.0.0.1:9",
        f"{root}/k",
    )
    assert other.returncode == 1, other.stderr.decode()
    one_line_error(other)


def test_downloads_never_leave_the_directory(
    moto_server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    env = moto_server.env()
    client = moto_server.client()
    bucket = "cli-unsafe-keys"
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    try:
        for key in ["evil/ok.txt", "evil/../../escape.txt", "safe//abs/x.txt", "safe/./y.txt"]:
            client.put_object(Bucket=bucket, Key=key, Body=key.encode())  # type: ignore[attr-defined]
        client.put_object(Bucket=bucket, Key="/rooted.txt", Body=b"r")  # type: ignore[attr-defined]
        dest = tmp_path / "a" / "b" / "dest"
        for args in (
            ("cp", "-r", f"s3://{bucket}/evil", str(dest)),
            ("cp", f"s3://{bucket}/evil/*", str(dest) + "/"),
        ):
            done = run(env, *args)
            assert done.returncode == 1, done.stderr.decode()
            assert "refusing to write" in one_line_error(done)
        assert not list(tmp_path.rglob("*.txt")), "nothing may be written when a key is unsafe"
        # Empty components and "." are dropped: absolute-looking keys stay inside.
        ok(env, "cp", "-r", f"s3://{bucket}/safe", str(dest))
        assert _files(dest) == {"abs/x.txt": b"safe//abs/x.txt", "y.txt": b"safe/./y.txt"}
        (dest / "link").symlink_to(tmp_path, target_is_directory=True)
        client.put_object(Bucket=bucket, Key="sym/link/owned.txt", Body=b"x")  # type: ignore[attr-defined]
        done = run(env, "cp", "-r", f"s3://{bucket}/sym", str(dest))
        assert done.returncode == 1 and "resolves to" in one_line_error(done)
        assert not (tmp_path / "owned.txt").exists()
        ok(env, "cp", f"s3://{bucket}//rooted.txt", str(dest) + "/")
        assert (dest / "rooted.txt").read_bytes() == b"r"
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):  # type: ignore[attr-defined]
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])  # type: ignore[attr-defined]
        client.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]


@pytest.mark.unit
def test_safe_local_path(tmp_path: pathlib.Path) -> None:
    root = str(tmp_path)
    assert safe_local_path(root, "a/b") == os.path.join(root, "a", "b")
    assert safe_local_path(root, "/etc/passwd") == os.path.join(root, "etc", "passwd")
    assert safe_local_path(root, "a//./b") == os.path.join(root, "a", "b")
    for bad in ["../x", "a/../../x", "..", "", "/", "a/\0b"]:
        with pytest.raises(MetaflowS3Exception):
            safe_local_path(root, bad)


def test_progress_bar_only_on_a_terminal(
    seaweed: Server, seaweed_bucket: str, tree: pathlib.Path
) -> None:
    env = {**os.environ, **seaweed.env()}
    url = f"s3://{seaweed_bucket}/bar/"
    done = run(seaweed.env(), "cp", "-r", str(tree), url)
    assert done.returncode == 0 and "uploaded 4 files" in done.stderr.decode()
    assert "\r" not in done.stderr.decode()  # no bar when stderr is not a terminal

    def on_tty(*args: str) -> str:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        proc = subprocess.Popen(
            [sys.executable, "-m", "s3fast", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=slave,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        assert proc.wait(60) == 0
        return b"".join(chunks).decode(errors="replace")

    shown = on_tty("cp", "-r", str(tree), url)
    assert "4/4 objects" in shown and "upload" in shown and "B/s" in shown
    assert "objects" not in on_tty("cp", "-r", "--quiet", str(tree), url)
    shown = on_tty("cp", "-r", url, str(tree.parent / "down"))
    assert "download" in shown and "4/4 objects" in shown and "100%" in shown  # total known


def test_console_script_and_bench_help() -> None:
    script = shutil.which("s3fast", path=os.path.dirname(sys.executable))
    assert script, "the s3fast console script is installed with the package"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "cp" in done.stdout and "bench" in done.stdout
    done = subprocess.run([script, "bench", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout  # the harness's own help


@pytest.mark.unit
def test_bench_outside_a_checkout_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "checkout_root", lambda: None)
    assert cli.main(["bench", "--quick"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("s3fast: error: s3fast bench runs the benchmark harness") and (
        err.count("\n") == 1
    )


@pytest.mark.unit
def test_tune_explains_the_plan() -> None:
    """`s3fast tune` prints each setting with its reason; the environment overrides the plan
    and the output says so; --json gives the same plan as data."""
    text = ok({"S3FAST_MAX_CONCURRENCY": "48"}, "tune")
    assert "max_concurrency" in text and "48" in text and "S3FAST_MAX_CONCURRENCY" in text
    assert "range_size" in text and "processes" in text
    plan = jsonl(ok({"S3FAST_RANGE_SIZE": "16M"}, "tune", "--json"))[0]
    assert plan["range_size"] == 16 * 1024 * 1024
    assert isinstance(plan["reasons"], dict) and "max_concurrency" in plan["reasons"]
