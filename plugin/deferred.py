"""Deferred scoring: score the samples that training logged with ``log_gen_samples``.

A separate evaluation worker (``genmetrics score RUN_ID`` once, or ``genmetrics watch`` as a
service) downloads each pending step's samples, computes the metrics against the reference and
logs them to the run with the step of the samples, then marks the step scored with the tag
``genmetrics.scored.<step>`` (naming the logged keys). Prompts stored beside the samples
(``log_gen_samples(..., prompts=...)``) go with them to scoring, for ``clip_score``.

Exactly once, also across a crash or a kill of the worker:

1. a step is pending while it has a ``genmetrics.samples.<step>`` tag and no ``scored`` or ``failed`` tag;
2. before scoring a pending step, the metric histories of the run's metrics under ``prefix`` are
   read; if any of them already has an entry at that step, the worker died after logging and before
   marking: the step is only marked, never logged again;
3. otherwise the metrics are logged with ``log_gen_metrics`` (one ``log_batch``; linked to the LoggedModel the
   run logged as an output at that step, when there is exactly one: `_model_at_step`), and only then the
   step is marked. ``log_gen_metrics`` spools writes when the tracking server is down; spooled
   metrics are invisible to check 2, so a worker replays the spool before scoring and marks a step
   only when nothing stays spooled (otherwise it stops and a later pass continues).

A step whose samples file can never be scored (not a samples archive, corrupt, or over the size limits of
:mod:`genmetrics.plugin.samples`, checked before anything is allocated) is recorded as failed: tag
``genmetrics.failed.<step>`` with the reason, one warning naming the step, and it is not retried (delete the
tag to retry it). Other failures (the reference, a download, the tracking server) leave the step pending:
the next pass retries it.

Two workers scoring the same run at the same time are not coordinated: run one worker per
experiment (several experiments may have one worker each).
"""
import logging
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

from genmetrics.stats.defaults import DEFAULT_PREFIX, WATCH_INTERVAL_S

from .samples import (FAILED_TAG_PREFIX, SCORED_TAG_PREFIX, SamplesFileError, pending_sample_steps,
                      read_samples_and_prompts)
from .spool import redact_text

_logger = logging.getLogger(__name__)


class DeferredScoringError(RuntimeError):
    """Some steps of a run could not be scored; the others were scored and marked (``.scored``).

    ``scored``: the steps scored (or marked); ``failed``: the steps recorded as failed (``.failed`` tag, not
    retried); the other steps that could not be scored stay pending.
    """

    def __init__(self, message, scored=(), failed=()):
        super().__init__(message)
        self.scored = list(scored)
        self.failed = list(failed)


class TrackingUnavailableError(RuntimeError):
    """The tracking server did not take the writes; nothing is marked, a later run continues."""


def _client(client):
    from mlflow.tracking import MlflowClient

    return client or MlflowClient()


def _steps_with_logged_metrics(client, run_id, prefix):
    """Steps at which any metric whose key starts with ``prefix`` was logged in the run."""
    run = client.get_run(run_id)
    steps = set()
    for key in run.data.metrics:
        if key.startswith(prefix):
            steps.update(m.step for m in client.get_metric_history(run_id, key))
    return steps


def _logged_keys_at(client, run_id, prefix, step):
    run = client.get_run(run_id)
    return sorted(
        key
        for key in run.data.metrics
        if key.startswith(prefix) and any(m.step == step for m in client.get_metric_history(run_id, key))
    )


def _download_samples(client, run_id, artifact_path):
    with tempfile.TemporaryDirectory(prefix="genmetrics-score-") as tmp:
        local = client.download_artifacts(run_id, artifact_path, tmp)
        return read_samples_and_prompts(local, where=artifact_path)


def _mark_scored(client, run_id, step, keys):
    client.set_tag(run_id, SCORED_TAG_PREFIX + str(step), ",".join(keys) or "1")


_MAX_REASON = 1000  # characters of a failed tag's value (MLflow takes 8000)


def _mark_failed(client, run_id, step, error):
    """Record `step` as failed (tag ``genmetrics.failed.<step>`` = the reason) and warn once, naming it."""
    reason = redact_text(error)
    reason = reason if len(reason) <= _MAX_REASON else reason[:_MAX_REASON - 3] + "..."
    client.set_tag(run_id, FAILED_TAG_PREFIX + str(step), reason)
    _logger.warning("run %s step %d: not scored, recorded as failed (tag %s%d; not retried): %s", run_id, step,
                    FAILED_TAG_PREFIX, step, reason)


class _Scorer:
    """Holds the reference and the scoring options of one worker; loads the reference once. The options are
    checked here, once (an unknown name is a TypeError, a bad value a ValueError), not at every step."""

    def __init__(self, reference, metrics, prefix, scoring_options):
        from .log_metrics import SCORE_OPTIONS
        from .options import ScoreOptions

        ScoreOptions.from_keywords(scoring_options, SCORE_OPTIONS, "score_run/watch", metrics=metrics, prefix=prefix)
        self.reference = reference
        self.metrics = metrics
        self.prefix = prefix
        self.options = dict(scoring_options)

    def loaded_reference(self):
        from genmetrics import registry

        return registry.load(self.reference, progress=False)

    def log_step(self, client, run_id, step, samples, targets, prompts=None):
        """Compute the metrics of one step's samples (with the `prompts` stored beside them, for ``clip_score``)
        and log them at that step; returns the keys.

        Raises :class:`TrackingUnavailableError` when the write was spooled (server down) instead of
        delivered: the step stays unmarked until the spool is replayed.
        """
        from .log_metrics import log_gen_metrics

        logged = log_gen_metrics(
            samples, reference=self.loaded_reference(), step=step, metrics=self.metrics, targets=targets,
            prompts=prompts, run_id=run_id, prefix=self.prefix, client=client,
            model_id=_model_at_step(client, run_id, step),
            **self.options,
        )
        _require_empty_spool(client)
        return sorted(logged)


def _model_at_step(client, run_id, step):
    """The id of the LoggedModel that the run logged as an output at `step` (MLflow 3: ``mlflow.<flavor>.log_model(
    ..., step=step)``, the checkpoint whose samples these are), so the step's metrics link to it as MLflow's own
    ``log_metrics`` links metrics logged at a model's step; None when there is none, several, or no LoggedModels."""
    outputs = getattr(client.get_run(run_id), "outputs", None)
    ids = {output.model_id for output in (getattr(outputs, "model_outputs", None) or []) if output.step == step}
    return ids.pop() if len(ids) == 1 else None


def _require_empty_spool(client):
    """Deliver what the spool of this tracking URI holds; raise while anything stays spooled.

    A step is scored only against a fully delivered run: spooled metrics would be invisible to the
    "already logged?" check and could otherwise be logged a second time.
    """
    from .spool import redact_uri, replay

    left = replay(client.tracking_uri).get(client.tracking_uri, 0)
    if left:
        raise TrackingUnavailableError(
            f"{left} genmetrics write(s) to {redact_uri(client.tracking_uri)} are still spooled (the tracking "
            "server is unavailable); scoring resumes, without duplicates, once they are delivered"
        )


def _score_run_with(scorer, client, run_id):
    """Score the pending steps of ``run_id`` in step order; returns the steps scored or marked."""
    pending = pending_sample_steps(client.get_run(run_id).data.tags)
    if not pending:
        return []
    _require_empty_spool(client)
    already_logged = _steps_with_logged_metrics(client, run_id, scorer.prefix)
    if any(step not in already_logged for step in pending):
        scorer.loaded_reference()  # a missing or invalid reference fails here, once, not per step
    done, failures, refused = [], {}, {}
    for step, artifact_path in pending.items():
        try:
            if step in already_logged:
                _logger.info("run %s step %d: metrics already logged, marking it scored", run_id, step)
                keys = _logged_keys_at(client, run_id, scorer.prefix, step)
            else:
                samples, targets, prompts = _download_samples(client, run_id, artifact_path)
                keys = scorer.log_step(client, run_id, step, samples, targets, prompts)
            _mark_scored(client, run_id, step, keys)
            done.append(step)
        except SamplesFileError as exc:  # the file will never read otherwise: record it, do not retry
            _mark_failed(client, run_id, step, exc)
            refused[step] = exc
        except (ValueError, TypeError, OSError, KeyError) as exc:
            _logger.warning("run %s step %d: not scored (retried at the next pass): %s", run_id, step,
                            redact_text(exc))
            failures[step] = exc
    if failures or refused:
        raise DeferredScoringError(_failure_summary(run_id, len(pending), failures, refused), scored=done,
                                   failed=list(refused))
    return done


def _failure_summary(run_id, pending, failures, refused):
    """One sentence: which steps failed, which of them are recorded as failed and which are retried."""
    parts = [f"step {step}: {redact_text(exc)}" for step, exc in sorted({**failures, **refused}.items())]
    text = f"run {run_id}: {len(failures) + len(refused)} of {pending} pending steps could not be scored " \
           f"({'; '.join(parts)}); the other steps were scored."
    if refused:
        text += f" Recorded as failed, not retried: step(s) {', '.join(map(str, sorted(refused)))} (tags " \
                f"{FAILED_TAG_PREFIX}<step>; delete the tag to retry)."
    if failures:
        text += f" Fix the cause and run the scorer again: it retries step(s) {', '.join(map(str, sorted(failures)))}."
    return text


def score_run(run_id: str, reference, metrics: Optional[Sequence[str]] = None, client=None, prefix: str = DEFAULT_PREFIX,
              **scoring_options) -> List[int]:
    """Score every logged sample step of ``run_id`` that is not scored yet, in step order.

    ``reference``: registry ref, ``.h5`` path or ``ReferenceStats``. ``metrics``: names as for
    ``log_gen_metrics``, None = its default set with unavailable metrics skipped (``targets`` stored
    with the samples make SSIM/LPIPS paired).
    ``scoring_options`` go to ``log_gen_metrics``: options of :class:`genmetrics.plugin.options.ScoreOptions`
    (e.g. ``device``, ``batch_size``), checked before any step is scored.
    Idempotent and safe to kill at any point (see the module docstring).
    Returns the list of steps scored (or only marked, after a crash) by this call. Raises
    :class:`DeferredScoringError` after scoring the other steps when some could not be scored (its ``failed``
    steps were recorded as failed and are not retried).
    """
    scorer = _Scorer(reference, metrics, prefix, scoring_options)
    return _score_run_with(scorer, _client(client), run_id)


def _experiment_run_ids(client, experiment_name):
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    run_ids, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        run_ids.extend(run.info.run_id for run in page if pending_sample_steps(run.data.tags))
        token = page.token
        if not token:
            return run_ids


def watch(
    experiment_name: str,
    reference,
    metrics: Optional[Sequence[str]] = None,
    interval: float = WATCH_INTERVAL_S,
    max_iterations: Optional[int] = None,
    client=None,
    prefix: str = DEFAULT_PREFIX,
    **scoring_options,
) -> List[Tuple[str, int]]:
    """Poll ``experiment_name`` every ``interval`` seconds and score new samples as they arrive.

    For a separate evaluation worker: each iteration lists the experiment's active runs, scores
    their pending steps (as :func:`score_run`) and sleeps. Runs forever unless ``max_iterations``
    is given (1 = one pass, like ``genmetrics watch --once``). Errors of one run (the tracking server
    down, a missing reference) are logged and retried at the next iteration; they never stop the worker. A
    samples file that can never be scored is recorded as failed and warned about once (module docstring).
    The experiment may not exist yet (the worker can start before training). ``scoring_options``: as for
    :func:`score_run`.
    Returns the list of (run_id, step) scored by this call.
    """
    if interval < 0:
        raise ValueError(f"interval must be >= 0 seconds, got {interval}")
    if max_iterations is not None and max_iterations < 1:
        raise ValueError(f"max_iterations must be None (forever) or >= 1, got {max_iterations}")
    client = _client(client)
    scorer = _Scorer(reference, metrics, prefix, scoring_options)
    scored = []
    iteration = 0
    while True:
        iteration += 1
        try:
            run_ids = _experiment_run_ids(client, experiment_name)
        except Exception as exc:  # the tracking server may be down: keep polling
            _logger.warning("watch %s: cannot list runs: %s", experiment_name, redact_text(exc))
            run_ids = []
        for run_id in run_ids:
            try:
                scored.extend((run_id, step) for step in _score_run_with(scorer, client, run_id))
            except DeferredScoringError as exc:  # each step that failed was warned about, naming it
                scored.extend((run_id, step) for step in exc.scored)
            except Exception as exc:  # one broken run or a server outage must not stop the worker
                _logger.warning("watch %s: run %s: %s", experiment_name, run_id, redact_text(exc))
        if max_iterations is not None and iteration >= max_iterations:
            return scored
        time.sleep(interval)


__all__ = ["score_run", "watch", "DeferredScoringError", "TrackingUnavailableError"]
