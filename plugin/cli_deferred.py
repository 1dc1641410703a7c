"""``genmetrics score RUN_ID`` and ``genmetrics watch --experiment NAME``: deferred scoring workers."""
import logging
import os

from genmetrics.stats.defaults import DEFAULT_METRICS, WATCH_INTERVAL_S
from genmetrics.stats.metric_table import METRICS

from .cli_checks import non_negative_float, positive_int
from .options import add_option_flags

__all__ = ["add_parser"]

#: The scoring options (:class:`genmetrics.plugin.options.ScoreOptions`) offered as flags by ``score`` and ``watch``.
OPTION_FLAGS = ("prefix", "device", "batch_size", "precision", "reference_images")


def _add_common(parser):
    parser.add_argument("--reference", required=True,
                        help="registry ref (e.g. cifar10-train-32), or a path to an .h5 statistics file")
    parser.add_argument("--metrics", default=None,
                        help=f"comma-separated metrics among {','.join(METRICS)} (default: {','.join(DEFAULT_METRICS)}, "
                             f"skipping those whose inputs are unavailable)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or MLflow's default)")
    add_option_flags(parser, OPTION_FLAGS)


def add_parser(subparsers):
    score = subparsers.add_parser(
        "score", help="score the samples logged to a run (log_gen_samples) that are not scored yet",
        description="Score every step of RUN_ID whose samples were logged with log_gen_samples and that is "
                    "not scored yet; idempotent and safe to kill and re-run.",
    )
    score.add_argument("run_id", metavar="RUN_ID")
    _add_common(score)
    score.set_defaults(func=_run_score)

    watch = subparsers.add_parser(
        "watch", help="poll an experiment and score new samples as they arrive (an evaluation worker)",
        description="Poll the runs of an experiment and score newly logged samples; run one worker per experiment.",
    )
    watch.add_argument("--experiment", required=True, metavar="NAME", help="experiment name")
    watch.add_argument("--interval", type=non_negative_float, default=WATCH_INTERVAL_S, metavar="S",
                       help=f"seconds between polls (default: {WATCH_INTERVAL_S:g})")
    watch.add_argument("--once", action="store_true", help="one pass over the experiment, then exit")
    watch.add_argument("--max-iterations", type=positive_int, default=None, metavar="N", help="stop after N polls")
    _add_common(watch)
    watch.set_defaults(func=_run_watch)


def _options(args):
    """The scoring options, checked before torch or MLflow is imported."""
    metrics = None
    if args.metrics is not None:
        metrics = [m.strip().lower().replace("-", "_") for m in args.metrics.split(",") if m.strip()]
        if not metrics:
            raise ValueError("--metrics is empty; name at least one metric, e.g. --metrics fid,kid")
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"--metrics: unknown metric(s) {', '.join(unknown)}; choose among {','.join(METRICS)}")
    return dict(metrics=metrics, **{name: getattr(args, name) for name in OPTION_FLAGS})


def _setup(args):
    import mlflow

    log_format = "%(asctime)s %(name)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO, format=log_format)
    for handler in logging.getLogger("genmetrics").handlers:  # a worker's log: every line with its time
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(log_format))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per sample file is noise in logs
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)


def _run_score(args):
    options = _options(args)
    from mlflow.exceptions import MlflowException

    from .deferred import score_run

    _setup(args)
    try:
        steps = score_run(args.run_id, args.reference, **options)
    except MlflowException as exc:  # e.g. an unknown run id: a one-line error, not a traceback
        raise RuntimeError(f"run {args.run_id}: {exc.message}") from exc
    print(f"run {args.run_id}: scored {len(steps)} step(s){': ' + ', '.join(map(str, steps)) if steps else ''}")
    return 0


def _run_watch(args):
    options = _options(args)
    from .deferred import watch

    _setup(args)
    max_iterations = 1 if args.once else args.max_iterations
    scored = watch(args.experiment, args.reference, interval=args.interval, max_iterations=max_iterations, **options)
    print(f"experiment {args.experiment}: scored {len(scored)} step(s)")
    return 0
