"""genmetrics.registry: versioned, checksummed reference statistics (.h5, format v1) fetched or built."""
from .refstats import ReferenceStats, RefStatsFormatError, read_refstats, write_refstats  # noqa: F401
from .manifest import ManifestEntry, UnknownRefError, resolve  # noqa: F401
from .fetch import fetch, info, list_entries, load, verify  # noqa: F401
from .npz_import import import_npz  # noqa: F401
from .build import build  # noqa: F401
from .merge import merge  # noqa: F401
from .prompts_store import prompts  # noqa: F401

__all__ = ["ReferenceStats", "RefStatsFormatError", "read_refstats", "write_refstats", "ManifestEntry",
           "UnknownRefError", "resolve", "fetch", "info", "list_entries", "load", "verify", "import_npz", "build",
           "merge", "prompts"]
