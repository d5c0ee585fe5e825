"""s3fast's Metaflow setting: ``METAFLOW_S3FAST_ENABLED``.

Read like every Metaflow setting (the environment, then ``$METAFLOW_HOME/config.json`` or the
profile's ``config_<profile>.json``), so ``metaflow configure``-style files and the values
Metaflow passes on to remote tasks (``--with batch``, ``--with kubernetes``) carry it too.
Off (the default), the extension does nothing: Metaflow's own S3 datastore, IncludeFile client
and ``metaflow.S3`` are used.

Every public name here becomes an attribute of ``metaflow.metaflow_config``.
"""

from metaflow.metaflow_config_funcs import from_conf as _from_conf


def _as_bool(raw):
    """``true``/``1``/``yes``/``on`` (any case, or a JSON boolean or number) is on;
    ``false``/``0``/``no``/``off``/empty/unset is off; anything else is an error."""
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    if isinstance(raw, int | float):
        return raw != 0
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(
        f"METAFLOW_S3FAST_ENABLED={raw!r}: expected true/false (or 1/0, yes/no, on/off)"
    )


# No default given: the raw value (a string from the environment, any JSON value from the
# config file) is parsed here, and only a value the user set is passed on to remote tasks.
S3FAST_ENABLED = _as_bool(_from_conf("S3FAST_ENABLED"))

del _as_bool, _from_conf
