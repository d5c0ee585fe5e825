"""With ``METAFLOW_S3FAST_ENABLED`` on, ``from metaflow import S3`` is ``s3fast.S3`` and
``metaflow version`` lists s3fast; off, nothing is added to ``metaflow``."""

from metaflow.metaflow_config import S3FAST_ENABLED as _ENABLED  # type: ignore[attr-defined]

if _ENABLED:
    toplevel = "s3fast_toplevel"

del _ENABLED
