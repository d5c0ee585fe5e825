"""Where downloaded bytes land: private temp dirs on tmpfs or disk, with free-space checks.

The root is chosen in this order: the ``tmproot`` argument, ``S3FAST_TMPDIR``,
``METAFLOW_TEMPDIR``, ``metaflow.current.tempdir`` inside a running flow (all of these are
*explicit*: only that place is used), else a tmpfs mount (``/dev/shm``) while its free space
covers the download with a margin, falling back to the system temp dir.

Each root gets one private directory (mode 0700, files 0600) per client, made on first use and
removed by :meth:`TempDirs.close` (or at exit). Local names are ``<n>-<sanitized leaf>``: they
never derive from a key in a way that can leave the directory.

A client used in a forked child gets dirs of its own (:meth:`TempDirs.for_child`), made inside
the parent's (made there for the parent if it had none yet): the child removes its own when it
closes or exits, and what a child leaves (one that ends with ``os._exit()``, as the children of
Metaflow's ``parallel_map`` do) goes with the parent's. A child never removes the parent's.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing.util
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import threading

from .errors import MetaflowS3InsufficientDiskSpace
from .limits import MiB
from .metaflow_settings import metaflow_tempdir

TMPFS_CANDIDATES = ("/dev/shm",)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DIR_PREFIX = "s3fast."


def _explicit_root(tmproot: str | None) -> str | None:
    if tmproot:
        return tmproot
    if os.environ.get("S3FAST_TMPDIR"):
        return os.environ["S3FAST_TMPDIR"]
    configured = metaflow_tempdir()  # METAFLOW_TEMPDIR, or Metaflow's config file
    if configured:
        return configured
    if "metaflow" in sys.modules:  # only look inside a flow that is already imported
        try:
            from metaflow import current  # type: ignore[import-not-found]

            if current.is_running_flow and getattr(current, "tempdir", None):
                return str(current.tempdir)
        except Exception:
            pass
    return None


@functools.lru_cache(maxsize=16)
def _is_tmpfs(path: str) -> bool:
    """Is ``path`` a tmpfs mount point? Looked up once per place (not per client)."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return False
    real = os.path.realpath(path)
    return any(len(m) > 2 and m[1] == real and m[2] == "tmpfs" for m in mounts)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def margin(path: str, explicit: bool = False) -> int:
    """Space to leave free. A place the user chose keeps a little slack; an automatic choice
    keeps more, and tmpfs (which is memory) more still."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    if explicit:
        return min(16 * MiB, total // 100)
    if _is_tmpfs(path):
        return max(256 * MiB, total // 10)
    return max(64 * MiB, total // 100)


def local_name(counter: int, url: str, tag: str = "") -> str:
    leaf = url.rstrip("/").rsplit("/", 1)[-1]
    leaf = _SAFE.sub("_", leaf).strip("._")[:80] or "object"
    return f"{counter:06d}-{leaf}{'-' + tag if tag else ''}"


class _Root:
    def __init__(self, base: str, explicit: bool, inside: str | None = None) -> None:
        self.base = base
        self.explicit = explicit
        self.inside = inside  # a forked child's: the parent's dir, where its own is made
        self.dir: str | None = None
        self.reserved = 0
        self._margin: int | None = None

    def margin(self) -> int:
        """Made on first use (the base may not exist before), then cached."""
        if self._margin is None:
            os.makedirs(self.base, exist_ok=True)
            self._margin = margin(self.base, self.explicit)
        return self._margin


class TempDirs:
    """Private temp dirs and space reservations for one client. Thread-safe."""

    def __init__(self, tmproot: str | None = None, *, parent: TempDirs | None = None) -> None:
        self._roots: list[_Root]
        explicit = _explicit_root(tmproot) if parent is None else None
        if parent is not None:
            self._roots = [_Root(r.base, r.explicit, parent._path(r)) for r in parent._roots]
        elif explicit is not None:
            self._roots = [_Root(explicit, True)]
        else:
            shm = [p for p in TMPFS_CANDIDATES if os.path.isdir(p) and os.access(p, os.W_OK)]
            self._roots = [_Root(p, False) for p in shm] + [_Root(tempfile.gettempdir(), False)]
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._closed = False
        self._pid = os.getpid()  # the dirs belong to this process, not to a forked child
        # Dirs are named, before they exist, by this process's pid and a random token, so that
        # a forked child can make its own inside them.
        self._token = secrets.token_hex(6)
        self._at_exit: multiprocessing.util.Finalize | None = None

    def for_child(self) -> TempDirs:
        """In a forked child: its own TempDirs (see the module's doc); this one stays the
        parent's."""
        return TempDirs(parent=self)

    def _path(self, root: _Root) -> str:
        return os.path.join(root.inside or root.base, f"{_DIR_PREFIX}{self._pid}.{self._token}")

    @property
    def dirs(self) -> list[str]:
        """The private dirs made so far."""
        return [r.dir for r in self._roots if r.dir]

    def _ensure_dir(self, root: _Root) -> str:
        if root.dir is None:
            if self._at_exit is None:
                # Removed at exit if not closed before, also in a child of multiprocessing's
                # fork start method, which ends with os._exit() (no atexit, no weakref.finalize)
                # but runs multiprocessing's own finalizers.
                self._at_exit = multiprocessing.util.Finalize(
                    None, _remove_dirs, args=(self._paths(), self._pid), exitpriority=0
                )
            if root.inside is not None:
                _private_dir(root.inside)  # the parent's, if it has not made it yet
            # the pid in the name tells which process a leftover belongs to
            root.dir = _private_dir(self._path(root))
        return root.dir

    def _paths(self) -> list[str]:
        return [self._path(root) for root in self._roots]

    def reserve(self, size: int, url: str) -> tuple[str, int]:
        """Pick a directory with room for ``size`` more bytes and reserve them.

        Returns ``(dir, token)``; hand the token back to :meth:`release`. Raises
        :class:`MetaflowS3InsufficientDiskSpace` before anything is written if no place fits.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the S3 client is closed")
            tried = []
            for idx, root in enumerate(self._roots):
                need = size + root.margin()
                avail = free_bytes(root.base) - root.reserved
                if size == 0 or avail >= need:
                    root.reserved += size
                    return self._ensure_dir(root), idx
                tried.append(f"{root.base} has {max(avail, 0) // MiB} MiB free")
            raise MetaflowS3InsufficientDiskSpace(
                f"{url}: not enough space for {size} bytes ({'; '.join(tried)})", url
            )

    def release(self, token: int, size: int) -> None:
        with self._lock:
            self._roots[token].reserved -= size

    def new_path(self, directory: str, url: str, tag: str = "") -> str:
        return os.path.join(directory, local_name(next(self._counter), url, tag))

    def all_dirs(self) -> list[tuple[str, str, bool]]:
        """``(private dir, root, explicit)`` for every root, in order of preference, the dirs
        made now: for worker processes, which reserve space and write files there themselves."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the S3 client is closed")
            out = []
            for root in self._roots:
                root.margin()  # makes the root if it is not there yet
                out.append((self._ensure_dir(root), root.base, root.explicit))
            return out

    def number(self) -> int:
        """The next number for a local name (see :func:`local_name`)."""
        with self._lock:
            return next(self._counter)

    def close(self) -> None:
        """Remove every private dir; safe to call twice. In a forked child it removes nothing:
        the dirs are the parent's, which removes them when it closes."""
        if self._pid != os.getpid():
            self._closed = True
            return
        with self._lock:
            self._closed = True
            # Also those a forked child made for us (where we had none), with what it left.
            _remove_dirs(self._paths(), self._pid)
            for root in self._roots:
                root.dir = None
            if self._at_exit is not None:
                self._at_exit.cancel()
                self._at_exit = None


def _remove_dirs(paths: list[str], pid: int) -> None:
    if pid != os.getpid():
        return  # the dirs of the process that made them (this is a forked child)
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _private_dir(path: str) -> str:
    """``path``, a new directory only this user can use (mode 0700), or the one this client
    made there in another process (a forked child, or its parent)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise FileExistsError(f"{path}: exists and is not a private dir of this user") from None
    return path
