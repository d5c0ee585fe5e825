"""Metaflow's settings, read the way Metaflow reads them: ``METAFLOW_*`` variables at call time,
then ``metaflow.metaflow_config`` (its config files, profiles and extensions) when metaflow is
installed and has settings beyond the environment. The precedence is in
docs/configuration.md."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import pkgutil
import sys
import threading
from typing import Any

_log = logging.getLogger(__name__)
_METAFLOW: list[bool] = []  # [is metaflow installed?], once looked up
_FILES: dict[tuple[str | None, ...], bool] = {}  # does metaflow have settings files, per place
_METAFLOW_LOCK = threading.Lock()
_UNSET = object()


def _metaflow_files() -> bool:
    """Is there anything besides the environment that metaflow would read its settings from:
    a config file (``$METAFLOW_HOME/config.json``, ``config_$METAFLOW_PROFILE.json``), a
    project's ``.metaflow/config.json`` above the working directory, or Metaflow extensions?"""
    home = os.environ.get("METAFLOW_HOME", "~/.metaflowconfig")
    profile = os.environ.get("METAFLOW_PROFILE")
    if profile or os.path.exists(os.path.expanduser(os.path.join(home, "config.json"))):
        return True  # (a profile that is not there: metaflow's own error says so)
    here = os.getcwd()
    while True:
        if os.path.exists(os.path.join(here, ".metaflow", "config.json")):
            return True
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    return _other_metaflow_extensions()


def _other_metaflow_extensions() -> bool:
    """Are Metaflow extensions installed other than s3fast's own (whose only setting,
    ``S3FAST_ENABLED``, changes nothing s3fast reads)?"""
    spec = importlib.util.find_spec("metaflow_extensions")
    if spec is None or not spec.submodule_search_locations:
        return False
    found = pkgutil.iter_modules(list(spec.submodule_search_locations))
    return any(module.name != "s3fast" for module in found)


def _metaflow_config() -> Any:
    """``metaflow.metaflow_config`` when metaflow is installed and has settings beyond the
    environment (see :func:`_metaflow_files`), else None. Imported on first use, never at
    s3fast's import: it is slow (~0.5 s), and it reads its files as it is imported. Without
    files, the environment alone gives what metaflow would (so no import is needed)."""
    module = sys.modules.get("metaflow.metaflow_config")
    if module is not None:
        return module
    if not _METAFLOW:
        with _METAFLOW_LOCK:
            if not _METAFLOW:
                _METAFLOW.append(importlib.util.find_spec("metaflow") is not None)
    if not _METAFLOW[0]:
        return None
    key = (
        os.environ.get("METAFLOW_HOME"),
        os.environ.get("METAFLOW_PROFILE"),
        os.environ.get("HOME"),
        os.getcwd(),
    )
    found = _FILES.get(key)
    if found is None:
        found = _FILES[key] = _metaflow_files()
    if not found:
        return None
    try:
        return importlib.import_module("metaflow.metaflow_config")
    except Exception as exc:  # a broken install or config: use the environment
        _log.warning("metaflow's configuration could not be read: %s", exc)
        _METAFLOW[0] = False
        return None


def metaflow_setting(name: str, default: Any = None) -> Any:
    """Metaflow's setting ``name`` (``S3_ENDPOINT_URL`` for ``METAFLOW_S3_ENDPOINT_URL``), as
    Metaflow resolves it: the ``METAFLOW_<name>`` environment variable, read now; else, when
    metaflow is installed, ``metaflow.metaflow_config.<name>`` (its config file
    ``$METAFLOW_HOME/config.json`` or ``config_$METAFLOW_PROFILE.json``, extensions, defaults);
    else ``default``. Empty values count as unset."""
    raw = os.environ.get("METAFLOW_" + name)
    if raw is not None and raw.strip() != "":
        return raw
    module = _metaflow_config()
    if module is not None:
        value = getattr(module, name, _UNSET)
        if value is not _UNSET and value is not None and value != "":
            return value
    return default


def metaflow_dict(name: str) -> dict[str, Any]:
    """A dict-valued Metaflow setting (``DATATOOLS_CLIENT_PARAMS``, ``DATATOOLS_SESSION_VARS``):
    JSON in the environment, or the value from ``metaflow_config``; a copy."""
    value = metaflow_setting(name)
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"METAFLOW_{name} is not valid JSON: {value!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"METAFLOW_{name} must be a JSON object, got {value!r}")
    return dict(value)


def metaflow_client_params() -> dict[str, Any]:
    """``DATATOOLS_CLIENT_PARAMS`` as the user set it. metaflow_config adds ``endpoint_url``
    (from ``S3_ENDPOINT_URL``) and ``verify`` (from ``S3_VERIFY_CERTIFICATE``) to its copy as
    it is imported; those two are resolved at call time instead (see :func:`s3_endpoint` and
    :func:`s3_verify`), so a copy of them that only mirrors the import-time value is
    dropped here."""
    params = metaflow_dict("DATATOOLS_CLIENT_PARAMS")
    module = _metaflow_config() if not os.environ.get("METAFLOW_DATATOOLS_CLIENT_PARAMS") else None
    if module is not None:
        for key, mirrored in (
            ("endpoint_url", getattr(module, "S3_ENDPOINT_URL", None)),
            ("verify", getattr(module, "S3_VERIFY_CERTIFICATE", None)),
        ):
            if mirrored and params.get(key) == mirrored:
                del params[key]
    return params


def s3_endpoint() -> str | None:
    """Metaflow's ``S3_ENDPOINT_URL`` (environment, then metaflow's config)."""
    value = metaflow_setting("S3_ENDPOINT_URL")
    return str(value) if value else None


def s3_verify() -> bool | str | None:
    """Metaflow's ``S3_VERIFY_CERTIFICATE``: a CA bundle path, or 0/false/no/off (no
    verification); None when unset."""
    value = metaflow_setting("S3_VERIFY_CERTIFICATE")
    return _verify_value(value)


def _verify_value(value: Any) -> bool | str | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in ("0", "false", "no", "off"):
        return False
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    return text or None


def s3_encryption() -> str | None:
    """``S3FAST_S3_SERVER_SIDE_ENCRYPTION``, else Metaflow's ``S3_SERVER_SIDE_ENCRYPTION``."""
    return os.environ.get("S3FAST_S3_SERVER_SIDE_ENCRYPTION") or metaflow_setting(
        "S3_SERVER_SIDE_ENCRYPTION"
    )


def datatools_root() -> str | None:
    """The root of ``run=`` addresses: ``S3FAST_DATATOOLS_S3ROOT``, else Metaflow's
    ``DATATOOLS_S3ROOT``, which Metaflow derives from ``DATASTORE_SYSROOT_S3`` + ``/`` +
    ``DATATOOLS_SUFFIX`` (``data``) when it is not set itself."""
    for name in ("S3FAST_DATATOOLS_S3ROOT", "METAFLOW_DATATOOLS_S3ROOT"):
        if os.environ.get(name):
            return os.environ[name]
    sysroot = os.environ.get("METAFLOW_DATASTORE_SYSROOT_S3")
    module = _metaflow_config()
    if module is not None and (
        not sysroot or getattr(module, "DATASTORE_SYSROOT_S3", None) == sysroot
    ):
        value = getattr(module, "DATATOOLS_S3ROOT", None)  # the config file's, or derived
        if value:
            return str(value)
    if sysroot:  # set since metaflow read its configuration: derive it as Metaflow does
        suffix = metaflow_setting("DATATOOLS_SUFFIX", "data")
        return sysroot.rstrip("/") + "/" + str(suffix)
    return None


def metaflow_tempdir() -> str | None:
    """Metaflow's ``TEMPDIR`` when set (environment or config file; Metaflow's own default,
    ``.``, is not used: s3fast's default is a private temp dir)."""
    raw = os.environ.get("METAFLOW_TEMPDIR")
    if raw:
        return raw
    module = _metaflow_config()
    if module is not None:
        value = getattr(module, "TEMPDIR", None)
        if value and value != ".":
            return str(value)
    return None


def retry_attempts() -> int | None:
    """Attempts per request from Metaflow's ``S3_RETRY_COUNT`` (retries: attempts = count +
    1) when it is set in the environment or Metaflow's config file (not its default)."""
    raw = os.environ.get("METAFLOW_S3_RETRY_COUNT")
    if raw is None or raw.strip() == "":
        module = _metaflow_config()
        if module is None:
            return None
        funcs = sys.modules.get("metaflow.metaflow_config_funcs")
        known = getattr(funcs, "_all_configs", {}).get("METAFLOW_S3_RETRY_COUNT")
        if known is None or known.is_default:
            return None
        raw = str(known.value)
    try:
        return max(1, int(raw) + 1)
    except ValueError:
        raise ValueError(f"METAFLOW_S3_RETRY_COUNT={raw!r} is not an integer") from None


def inject_failure_rate() -> int:
    """The default of ``inject_failure_rate``: ``METAFLOW_S3_TEST_RETRYABLE_FAILURES`` (a
    percentage), as metaflow.S3 reads it."""
    raw = os.environ.get("METAFLOW_S3_TEST_RETRYABLE_FAILURES", "").strip()
    try:
        return int(raw) if raw else 0
    except ValueError:
        raise ValueError(f"METAFLOW_S3_TEST_RETRYABLE_FAILURES={raw!r} is not an integer") from None
