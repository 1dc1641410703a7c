"""`log_gen_metrics`: score generated samples and log the numbers to an MLflow run, from a training loop."""
import inspect
import time

from genmetrics.stats.defaults import DEFAULT_PREFIX
from genmetrics.stats.streaming.distributed import check_all_ranks, rank_and_world

from . import background
from .grid import make_grid
from .lineage import REFERENCE_CONTEXT, reference_dataset
from .options import OPTION_NAMES, ScoreOptions
from .prompt_scoring import check_prompt_count, check_prompts, known_count, prompt_metrics
from .sample_input import SampleBatches
from .scoring import _check_metrics, _local_share, score_samples
from .spool import get_sender

__all__ = ["log_gen_metrics"]


def _resolve_run(run_id, client):
    """(run_id, tracking_uri): the given run, or the active run of the fluent API."""
    import mlflow

    if run_id is None:
        run = mlflow.active_run()
        if run is None:
            raise ValueError(
                "log_gen_metrics needs an MLflow run: call it inside `with mlflow.start_run():` or pass run_id=..."
            )
        run_id = run.info.run_id
    tracking_uri = client.tracking_uri if client is not None else mlflow.get_tracking_uri()
    return run_id, tracking_uri


def _log_result(result, run_id, tracking_uri, client, step, timestamp, log_grid, prefix, model_id=None):
    """Send the reference as a dataset input, metrics, provenance and tags (one log_batch), the sample grid and the
    copy-pairs grid; never raises for tracking-server failures (see spool.py).

    The provenance (`ScoreResult.params`) is logged as tags, not MLflow params: the UI's image card prints every
    param of the run above the sample grid, and ~20 provenance values (two 64-digit hashes, paths) pushed the
    grid out of the card; tags also take the latest value when a later call differs.

    Lineage (`genmetrics.plugin.lineage`): the reference file is a dataset input of the run (the sender adds it
    once per run); with `model_id` the metrics are also the LoggedModel's, measured on that reference dataset.
    """
    sender = get_sender(tracking_uri, client)
    dataset = reference_dataset(result.params, prefix)
    if dataset is not None:
        sender.submit({"op": "log_inputs", "run_id": run_id, "datasets": [dataset], "context": REFERENCE_CONTEXT})
    batch = {"op": "log_batch", "run_id": run_id,
             "metrics": [[key, value, timestamp, step] for key, value in result.metrics.items()],
             "tags": {**result.params, **result.tags}}
    if model_id is not None:
        batch.update(model_id=model_id, dataset=None if dataset is None else [dataset["name"], dataset["digest"]])
    sender.submit(batch)
    if log_grid and result.preview is not None:
        sender.submit(
            {"op": "log_image", "run_id": run_id, "key": f"{prefix}samples", "step": step, "timestamp": timestamp},
            image=make_grid(result.preview),
        )
    if log_grid and result.copy_pairs is not None:
        sender.submit(
            {"op": "log_image", "run_id": run_id, "key": f"{prefix}copy_pairs", "step": step, "timestamp": timestamp},
            image=result.copy_pairs,
        )
    return dict(result.metrics)


def _check_model_id(model_id):
    """`model_id` when it is a non-empty string (a LoggedModel's id); for None, MLflow's active model of the calling
    thread (``mlflow.set_active_model``, ``MLFLOW_ACTIVE_MODEL_ID``; MLflow >= 3), as MLflow's own ``log_metrics``
    does, or None; anything else is a TypeError saying what to pass."""
    if model_id is None:
        import mlflow

        active = getattr(mlflow, "get_active_model_id", None)  # MLflow >= 3
        return active() if active is not None else None
    if isinstance(model_id, str) and model_id:
        return model_id
    raise TypeError(f"model_id must be the id string of an MLflow LoggedModel (e.g. 'm-...': `model_id` of what "
                    f"mlflow.<flavor>.log_model returned, or of mlflow.create_external_model(...)), got {model_id!r}")


def log_gen_metrics(
    samples,
    reference=None,
    step=None,
    metrics=None,
    targets=None,
    run_id=None,
    prefix=DEFAULT_PREFIX,
    log_grid=True,
    blocking=True,
    client=None,
    num_samples=None,
    value_range=None,
    model_id=None,
    prompts=None,
    **score_options,
):
    """Score `samples` (see `score_samples`) and log them to the active MLflow run (or `run_id`).

    Logged: every metric in ONE ``log_batch`` with `step` (default 0) and one shared timestamp (the
    time of this call), with the provenance (reference, preprocessing, weights, counts) and the other
    information as tags in the same batch (tags, not params: see `_log_result`); with `log_grid` a grid of
    up to 64 samples via ``log_image(key=prefix + "samples", step=step)`` and, when metric ``copy`` flags
    samples, the flagged samples beside their nearest reference images via ``log_image(key=prefix +
    "copy_pairs", step=step)``: the reference images only when `reference_images` names where they are (and
    each is the one the statistics file recorded), else a placeholder with the image's index (see
    `genmetrics.plugin.copy_grid`; the tag ``copy.pairs`` names its rows, ``skipped.copy_pairs`` why there is
    no grid). A tracking server that is down never raises here: writes are retried, then spooled and replayed
    (see `genmetrics.plugin.spool`). `prompts`: one text per sample, in order, for ``clip_score`` (`score_samples`).

    Returns the metrics dict (keys exactly the logged metric keys, e.g. ``gen/fid``). With
    ``blocking=False`` the samples are drawn now, scoring and logging run on a background worker in
    call order, and a `concurrent.futures.Future` of that dict is returned; errors of earlier
    background work are raised by the next call and by `flush()`.

    `metrics`, `prefix`, `num_samples`, `value_range` and `score_options` are the options of
    :class:`genmetrics.plugin.options.ScoreOptions` (each one's meaning and default: ``help(ScoreOptions)``), all
    but ``copy_pairs``, which follows `log_grid`; they are checked before anything is drawn (an unknown name is a
    TypeError listing the valid ones). `client` is an `MlflowClient` to log with (its tracking URI), default the
    fluent API's tracking URI. Wrong prompt counts raise before anything is logged.
    Lineage (`genmetrics.plugin.lineage`): the reference file is logged once per run as a dataset input; `model_id`
    (a LoggedModel's id; default MLflow's active model) links the metrics to that model too (MLflow >= 3).

    Inside an initialised ``torch.distributed`` process group (multi-GPU training) every rank calls it with its
    own sampler: each rank draws its share of `num_samples`, the statistics are combined, rank 0 logs once (only
    rank 0 needs an MLflow run) and every rank returns the same dict; ``distributed=False`` opts out.
    """
    background.raise_pending_error()
    model_id = _check_model_id(model_id)
    opts = ScoreOptions.from_keywords(score_options, SCORE_OPTIONS, "log_gen_metrics", metrics=metrics, prefix=prefix,
                                      num_samples=num_samples, value_range=value_range, copy_pairs=log_grid)
    rank, world = rank_and_world() if opts.distributed else (0, 1)
    if world > 1 and not blocking:
        raise ValueError("blocking=False cannot be used inside a torch.distributed process group: the ranks combine "
                         "their statistics with collectives, which must not run on a background thread; call "
                         "log_gen_metrics with blocking=True on every rank (or distributed=False)")
    try:
        prompts, prompt_count = _check_prompts_up_front(samples, prompts, opts, rank, world)
        run_id, tracking_uri = _resolve_run(run_id, client) if rank == 0 else (None, None)
    except ValueError as error:  # under a process group the other ranks must not wait for rank 0 in scoring
        if world > 1:
            check_all_ranks(error)
        raise
    if world > 1:
        check_all_ranks()
    step = 0 if step is None else int(step)
    timestamp = int(time.time() * 1000)

    def score_and_log(samples, targets, value_range):
        result = score_samples(samples, reference=reference, targets=targets, prompts=prompts,
                               **dict(opts.keywords(), value_range=value_range))
        if rank != 0:  # under a process group rank 0 logs, every rank returns the same numbers
            return dict(result.metrics)
        return _log_result(result, run_id, tracking_uri, client, step, timestamp, log_grid, prefix, model_id)

    if blocking:
        return score_and_log(samples, targets, opts.value_range)
    return _in_background(score_and_log, samples, targets, opts, (run_id, tracking_uri, client, step), prompt_count,
                          prompts)


def _check_prompts_up_front(samples, prompts, opts, rank, world):
    """(prompts as a list of str, a copy that the caller may change afterwards; their number when a metric pairs
    them with the samples, else None). With such a metric the counts must agree when this rank's number of samples
    is known before drawing them; no prompts at all is an error at once."""
    prompts = check_prompts(prompts)
    if not prompt_metrics(_check_metrics(opts.metrics)[0]):
        return prompts, None
    expected = known_count(samples, _local_share(opts, rank, world))
    if prompts is None or expected is not None:
        check_prompt_count(expected, None if prompts is None else len(prompts))
    return prompts, len(prompts)


def _in_background(score_and_log, samples, targets, opts, where, prompt_count=None, prompts=None):
    """Draw the samples (and targets) now, score and log them on the background worker; a Future of the dict.
    `where` = (run_id, tracking_uri, client, step): where an interrupt spools the drawn samples unscored.
    `prompt_count`: the number of prompts a metric pairs with the samples (their list, copied by the caller, is
    held by `score_and_log`), checked here against the number drawn; None when no metric uses prompts. `prompts`
    (that list) are spooled with the samples when an interrupt leaves the step unscored.

    The input is decoded once, here: the held batches (:meth:`SampleBatches.drawn`) are what scoring, the grids
    and the spool consume, without decoding again."""
    drawn = SampleBatches(samples, opts.num_samples, opts.batch_size, opts.value_range).drawn()
    if prompt_count is not None:
        check_prompt_count(drawn.count, prompt_count)
    drawn_targets = None
    if targets is not None:
        drawn_targets = SampleBatches(targets, None, opts.batch_size, opts.value_range).drawn()
    # the drawn batches are already uint8 or float in [0, 1]: no value_range in the background
    return background.submit(lambda: score_and_log(drawn, drawn_targets, None),
                             description=f"scoring of step {where[3]}",
                             on_interrupt=lambda: _spool_unscored(drawn, drawn_targets, *where, prompts=prompts))


def _spool_unscored(drawn, drawn_targets, run_id, tracking_uri, client, step, prompts=None):
    """Spool the drawn samples of a step that an interrupt left unscored, for deferred scoring (the held batches of
    `drawn` / `drawn_targets`, :class:`SampleBatches`, quantised to uint8 without decoding again)."""
    from .samples import to_uint8_nhwc

    samples = to_uint8_nhwc(drawn)  # the batches as drawn: images of different sizes stay apart
    targets = to_uint8_nhwc(drawn_targets, name="targets") if drawn_targets is not None else None
    get_sender(tracking_uri, client).spool_samples(run_id, step, samples, targets, prompts)


#: The options `log_gen_metrics` takes as ``**score_options``: every option of `ScoreOptions` except its own
#: parameters and ``copy_pairs`` (which `log_grid` sets).
SCORE_OPTIONS = tuple(name for name in OPTION_NAMES
                      if name not in inspect.signature(log_gen_metrics).parameters and name != "copy_pairs")
