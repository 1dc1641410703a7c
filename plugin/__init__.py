from .background import flush  # noqa: F401
from .log_metrics import log_gen_metrics  # noqa: F401
from .scoring import score_samples  # noqa: F401
from .spool import replay  # noqa: F401
from .deferred import score_run, watch  # noqa: F401
from .samples import log_gen_samples  # noqa: F401

__all__ = ["flush", "log_gen_metrics", "score_samples", "replay", "score_run", "watch", "log_gen_samples"]
