"""``s3fast`` / ``python -m s3fast``: the command line.

::

    s3fast cp SRC... DST [--recursive]   local -> S3, S3 -> local, S3 -> S3 (server-side)
    s3fast ls URL [--recursive]          one level (DIR entries for prefixes), or everything
    s3fast info URL...                   size, type, metadata, ETag (one HEAD each)
    s3fast rm URL... [--recursive]       batched DeleteObjects; --recursive spares siblings
    s3fast cat URL                       an object's bytes to stdout
    s3fast tune                          the settings s3fast picks for this machine, and why
    s3fast bench [ARGS...]               the benchmark harness (from a checkout)

Sources may hold wildcards (``*``, ``?``, ``[...]``), in local paths and in S3 keys. Every
command takes ``--quiet`` (no progress bar or summary), ``--json`` (one JSON object per line
on stdout) and ``--endpoint-url``. The progress bar (bytes, objects, rate, ETA) is drawn on
stderr only when stderr is a terminal.

Exit codes: 0 success, 1 other errors, 2 usage, 3 not found, 4 access denied, 130 interrupted.
Errors are one line on stderr. Downloads into a directory never write outside it: keys with
``..`` components, or that resolve outside it (through a symlink, say), are refused before
anything is downloaded.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import (
    MetaflowS3Exception,
    MetaflowS3NotFound,
    MetaflowS3URLException,
)
from .progress import Progress
from .sync import S3
from .urls import parse

EXIT_OK, EXIT_OTHER, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_DENIED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
_WILDCARDS = "*?["


class UsageError(Exception):
    """Bad arguments: exit code 2."""


# --- output ----------------------------------------------------------------------------------


class Output:
    def __init__(self, args: argparse.Namespace) -> None:
        self.json = bool(args.json)
        self.quiet = bool(args.quiet)
        self.bar_enabled = not self.quiet and not self.json and sys.stderr.isatty()

    def record(self, **fields: Any) -> None:
        """One result: a JSON line with --json, else a plain line."""
        if self.json:
            print(json.dumps(fields, default=str), flush=True)

    def line(self, text: str) -> None:
        if not self.json:
            print(text, flush=True)

    def note(self, text: str) -> None:
        if not self.quiet and not self.json:
            print(text, file=sys.stderr, flush=True)

    def progress(self, desc: str, total_bytes: int | None = None) -> _Bar:
        return _Bar(desc, self.bar_enabled, total_bytes)


class _Bar:
    """A tqdm bar fed by s3fast's progress callback (called on s3fast's loop thread)."""

    def __init__(self, desc: str, enabled: bool, total_bytes: int | None = None) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                desc=desc,
                total=total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
            )

    def __call__(self, p: Progress) -> None:
        if self.bar is None:
            return
        if p.bytes_total is not None and self.bar.total != p.bytes_total:
            self.bar.total = p.bytes_total
        self.bar.n = p.bytes_done
        total = "?" if p.objects_total is None else p.objects_total
        self.bar.set_postfix_str(f"{p.objects_done}/{total} objects", refresh=False)
        self.bar.refresh()

    def callback(self) -> Callable[[Progress], None] | None:
        return self if self.bar is not None else None

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


# --- paths -----------------------------------------------------------------------------------


def is_s3(path: str) -> bool:
    return path.startswith("s3://")


def has_wildcard(text: str) -> bool:
    return any(c in text for c in _WILDCARDS)


def safe_local_path(root: str, relative: str) -> str:
    """``root/relative`` for a key-derived ``relative`` path, guaranteed to stay inside
    ``root``: empty and ``.`` components are dropped (so ``/abs`` and ``a//b`` stay inside),
    ``..`` components are refused, and the result must resolve inside ``root``."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or any("\0" in p for p in parts):
        raise MetaflowS3Exception(
            f"refusing to write key {relative!r} outside {root}: unsafe path", relative
        )
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, *parts))
    if os.path.commonpath([base, target]) != base or target == base:
        raise MetaflowS3Exception(
            f"refusing to write key {relative!r} outside {root}: it resolves to {target}",
            relative,
        )
    return os.path.join(root, *parts)


def _s3_matches(s3: S3, src: str, recursive: bool) -> list[tuple[str, int, str]]:
    """``(url, size, relative path)`` of the S3 objects a source names."""
    path = parse(src, need_key=False)
    if has_wildcard(path.key):
        # List from the last "/" before the first wildcard; match whole keys (as s5cmd does,
        # "*" also matches "/"); name each result by its key below that directory.
        first = min(path.key.index(c) for c in _WILDCARDS if c in path.key)
        base = path.key[:first].rpartition("/")[0]
        base = base + "/" if base else ""
        bucket_url = f"s3://{path.bucket}/"
        return [
            (obj.url, obj.size or 0, obj.url[len(bucket_url) + len(base) :])
            for obj in s3.list_recursive([bucket_url + base])
            if fnmatch.fnmatchcase(obj.url[len(bucket_url) :], path.key)
        ]
    if recursive:
        base = path.key.rstrip("/")
        base = base + "/" if base else ""
        bucket_url = f"s3://{path.bucket}/"
        return [
            (obj.url, obj.size or 0, obj.url[len(bucket_url) + len(base) :])
            for obj in s3.list_recursive([bucket_url + base])
            if not obj.url.endswith("/")  # "directory" markers
        ]
    info = s3.info(src)
    return [(src, info.size or 0, path.key.rsplit("/", 1)[-1])]


def _local_matches(src: str, recursive: bool) -> list[tuple[str, str]]:
    """``(local file, relative key)`` for a local source."""
    paths = sorted(glob.glob(src)) if has_wildcard(src) else [src]
    if not paths:
        raise MetaflowS3NotFound(f"no local files match {src}", src)
    found: list[tuple[str, str]] = []
    for path in paths:
        if os.path.isdir(path):
            if not recursive:
                raise UsageError(f"{path} is a directory (use --recursive)")
            base = Path(path)
            for file in sorted(p for p in base.rglob("*") if p.is_file()):
                rel = file.relative_to(base).as_posix()
                found.append((str(file), f"{base.name}/{rel}" if has_wildcard(src) else rel))
        elif os.path.isfile(path):
            found.append((path, os.path.basename(path)))
        else:
            raise MetaflowS3NotFound(f"Local file not found: {path}", path)
    return found


def _s3_dest(dst: str, rel: str, many: bool) -> str:
    if many or dst.endswith("/"):
        return dst.rstrip("/") + "/" + rel
    return dst


# --- commands --------------------------------------------------------------------------------


def cmd_cp(args: argparse.Namespace, out: Output) -> int:
    *sources, dst = args.paths
    if not sources:
        raise UsageError("cp needs a source and a destination")
    kinds = {is_s3(s) for s in sources}
    if len(kinds) > 1:
        raise UsageError("cp sources must be all local or all S3")
    from_s3, to_s3 = kinds.pop(), is_s3(dst)
    if not from_s3 and not to_s3:
        raise UsageError("cp needs an s3:// source or destination (use cp(1) for local copies)")
    with S3(endpoint_url=args.endpoint_url) as s3:
        if not from_s3:
            return _upload(s3, sources, dst, args.recursive, out)
        matches = [m for src in sources for m in _s3_matches(s3, src, args.recursive)]
        many = args.recursive or len(sources) > 1 or any(has_wildcard(s) for s in sources)
        if not matches:
            raise MetaflowS3NotFound(f"no objects match {' '.join(sources)}", sources[0])
        if to_s3:
            pairs = [(url, _s3_dest(dst, rel, many)) for url, _, rel in matches]
            with out.progress("copy", sum(m[1] for m in matches)) as bar:
                s3.copy_many(pairs, progress=bar.callback())
            for (src_url, dst_url), (_, size, _) in zip(pairs, matches, strict=True):
                out.record(src=src_url, dst=dst_url, size=size)
            out.note(f"copied {len(pairs)} objects ({sum(m[1] for m in matches)} bytes)")
            return EXIT_OK
        return _download(matches, dst, many, out, args.endpoint_url)


def _upload(s3: S3, sources: list[str], dst: str, recursive: bool, out: Output) -> int:
    files = [m for src in sources for m in _local_matches(src, recursive)]
    many = recursive or len(files) > 1 or len(sources) > 1
    pairs = [(_s3_dest(dst, rel, many), local) for local, rel in files]
    for url, _ in pairs:
        parse(url)
    with out.progress("upload") as bar:
        s3.put_files(pairs, progress=bar.callback())
    total = 0
    for url, local in pairs:
        size = os.path.getsize(local)
        total += size
        out.record(src=local, dst=url, size=size)
    out.note(f"uploaded {len(pairs)} files ({total} bytes)")
    return EXIT_OK


def _download(
    matches: list[tuple[str, int, str]],
    dst: str,
    many: bool,
    out: Output,
    endpoint_url: str | None,
) -> int:
    # Temp files land beside their destinations (same file system), then are renamed in place.
    if many or dst.endswith("/") or os.path.isdir(dst):
        # Check every destination before downloading anything.
        targets = {url: safe_local_path(dst, rel) for url, _, rel in matches}
        os.makedirs(dst, exist_ok=True)
        tmproot = dst
    else:
        targets = {matches[0][0]: dst}
        tmproot = os.path.dirname(os.path.abspath(dst))
    total = 0
    size = sum(m[1] for m in matches if m[0] in targets)
    with (
        S3(tmproot=tmproot, endpoint_url=endpoint_url) as s3,
        out.progress("download", size) as bar,
    ):
        for obj in s3.iter_get_many(list(targets), progress=bar.callback()):
            target = targets[obj.url]
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            assert obj.path is not None
            os.replace(obj.path, target)
            total += obj.size or 0
            out.record(src=obj.url, dst=target, size=obj.size)
    out.note(f"downloaded {len(targets)} objects ({total} bytes)")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace, out: Output) -> int:
    url = args.url if args.url.count("/") > 2 else args.url + "/"
    parse(url, need_key=False)
    with S3(endpoint_url=args.endpoint_url) as s3:
        objs = s3.list_recursive([url]) if args.recursive else s3.list_paths([url])
    for obj in objs:
        if obj.exists:
            out.record(url=obj.url, size=obj.size)
            out.line(f"{obj.size:>14}  {obj.url}")
        else:
            out.record(url=obj.url, prefix=True)
            out.line(f"{'DIR':>14}  {obj.url}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace, out: Output) -> int:
    with S3(endpoint_url=args.endpoint_url) as s3:
        objs = s3.info_many(args.urls)
    for obj in objs:
        fields = {
            "url": obj.url,
            "size": obj.size,
            "content_type": obj.content_type,
            "last_modified": obj.last_modified,
            "etag": obj.etag,
            "metadata": obj.metadata,
            "encryption": obj.encryption,
            "version_id": obj.version_id,
        }
        out.record(**fields)
        for name, value in fields.items():
            if value is not None:
                out.line(f"{name + ':':<15}{json.dumps(value) if name == 'metadata' else value}")
    return EXIT_OK


def cmd_rm(args: argparse.Namespace, out: Output) -> int:
    with S3(endpoint_url=args.endpoint_url) as s3, out.progress("delete") as bar:
        if args.recursive:
            urls = s3.delete_recursive(args.urls, progress=bar.callback())
        else:
            urls = s3.delete_many(args.urls, progress=bar.callback())
    for url in urls:
        out.record(deleted=url)
    out.note(f"deleted {len(urls)} objects")
    return EXIT_OK


def cmd_cat(args: argparse.Namespace, out: Output) -> int:
    with S3(endpoint_url=args.endpoint_url) as s3:
        obj = s3.get(args.url, return_info=False)
        assert obj.path is not None
        with open(obj.path, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_tune(args: argparse.Namespace, out: Output) -> int:
    from . import tuning

    chosen = tuning.plan()  # the environment's S3FAST_* settings applied
    out.record(**chosen.as_dict())
    out.line(chosen.explain())
    return EXIT_OK


def checkout_root() -> Path | None:
    """The repository root when s3fast runs from a checkout that has the benchmarks."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "benchmarks" / "run.py").is_file() else None


def run_bench(bench_args: list[str]) -> int:
    """``python -m benchmarks ARGS`` in the checkout; every argument goes to the harness."""
    root = checkout_root()
    if root is None:
        raise MetaflowS3Exception(
            "s3fast bench runs the benchmark harness of an s3fast checkout; this installation "
            "has none (clone the repository and run `make bench` there)"
        )
    return subprocess.call([sys.executable, "-m", "benchmarks", *bench_args], cwd=root)


# --- entry point -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    common.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    common.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL_S3, ...)")
    parser = _Parser(
        prog="s3fast",
        description="Fast S3 transfers. Exit codes: 0 ok, 1 error, 2 usage, 3 not found, "
        "4 access denied.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    cp = sub.add_parser("cp", parents=[common], help="copy: local <-> S3, S3 -> S3")
    cp.add_argument("paths", nargs="+", metavar="SRC... DST")
    cp.add_argument("-r", "--recursive", action="store_true")
    cp.set_defaults(run=cmd_cp)
    ls = sub.add_parser("ls", parents=[common], help="list a prefix")
    ls.add_argument("url")
    ls.add_argument("-r", "--recursive", action="store_true")
    ls.set_defaults(run=cmd_ls)
    info = sub.add_parser("info", parents=[common], help="an object's metadata")
    info.add_argument("urls", nargs="+")
    info.set_defaults(run=cmd_info)
    rm = sub.add_parser("rm", parents=[common], help="delete objects")
    rm.add_argument("urls", nargs="+")
    rm.add_argument("-r", "--recursive", action="store_true")
    rm.set_defaults(run=cmd_rm)
    cat = sub.add_parser("cat", parents=[common], help="write an object to stdout")
    cat.add_argument("url")
    cat.set_defaults(run=cmd_cat)
    tune = sub.add_parser("tune", parents=[common], help="the plan for this machine, and why")
    tune.set_defaults(run=cmd_tune)
    # Listed for --help; main() hands everything after "bench" to the harness itself.
    sub.add_parser("bench", help="run the benchmark harness (s3fast bench --help for its options)")
    return parser


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, UsageError | MetaflowS3URLException):
        return EXIT_USAGE
    if isinstance(exc, FileNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, PermissionError):
        return EXIT_DENIED
    return EXIT_OTHER


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:
            return run_bench(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.run(args, Output(args)))
    except KeyboardInterrupt:
        print("s3fast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `s3fast cat ... | head`
        _quiet_stdout()
        return EXIT_OK
    except (MetaflowS3Exception, UsageError, OSError, ValueError) as exc:
        print(f"s3fast: error: {_one_line(exc)}", file=sys.stderr)
        return exit_code(exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _quiet_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
