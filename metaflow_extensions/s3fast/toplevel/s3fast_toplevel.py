"""Names this extension adds to ``metaflow`` (loaded only when ``METAFLOW_S3FAST_ENABLED``
is on): ``metaflow.S3`` becomes s3fast's drop-in. ``__mf_extensions__`` and ``__version__``
are what ``metaflow version`` reports for the extension."""

from s3fast import S3
from s3fast import __version__ as __version__

__mf_extensions__ = "s3fast"

__all__ = ["S3"]
