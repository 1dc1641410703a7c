"""`GenMetricsCallback`: score a generator during ``lightning.Trainer.fit`` and log to the trainer's MLflow run.

Lightning is an optional dependency (``pip install mlflow-genmetrics[lightning]``); this module is the only one
that imports it, and ``import genmetrics.plugin`` does not import this module.

What one trigger does, on every rank of the job (one process, or each process of a ``ddp`` / ``ddp_spawn``
strategy):

1. this rank's share of `num_samples` is ``n_r = N (r+1) // k - N r // k`` for rank r of k (contiguous, equal
   where k divides N, summing to N: the split of :func:`genmetrics.stats.streaming.distributed.shard_size`);
2. ``sampler(pl_module, n_r)`` draws them, with every submodule in eval mode and under ``torch.no_grad()``;
   each submodule's own training flag is restored afterwards (a frozen part left in eval mode stays so);
3. :func:`genmetrics.plugin.log_gen_metrics` scores them: under a process group the ranks' float64 moments
   (n, sum, outer_sum) and kept features are combined, so the numbers are those of one process scoring all N
   images, and rank 0 logs each key once, at ``trainer.global_step``.
"""
import mlflow
import torch

try:
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import MLFlowLogger
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("genmetrics.plugin.lightning needs PyTorch Lightning: pip install "
                      "'mlflow-genmetrics[lightning]' (or pip install lightning)") from error

from genmetrics.stats.streaming.distributed import check_all_ranks, rank_and_world, shard_size

from .log_metrics import SCORE_OPTIONS, log_gen_metrics
from .options import ScoreOptions, _optional_positive, _positive
from .scoring import _check_metrics

__all__ = ["GenMetricsCallback"]

#: The scoring options the callback takes as keywords: those of `log_gen_metrics` plus its `prefix` and
#: `value_range`, except ``distributed`` (every rank always scores its share and the ranks combine).
CALLBACK_OPTIONS = tuple(name for name in SCORE_OPTIONS if name != "distributed") + ("prefix", "value_range")


class GenMetricsCallback(Callback):
    """Score samples of the module being trained every `every_n_train_steps` optimizer steps and/or at the end of
    every `every_n_epochs`-th training epoch, and log them to MLflow (see the module docstring for one trigger).

    At least one of `every_n_train_steps` / `every_n_epochs` is needed; when both fire at the same global step,
    the samples are scored once. Where the numbers go: the run of the trainer's `MLFlowLogger` (its ``run_id``,
    with the logger's tracking URI), else the MLflow run active when ``fit`` starts; without either, ``fit``
    stops at its start with a ValueError saying what to add.

    The recipe, single- and multi-process: the docs page *PyTorch Lightning* (docs/lightning.md).

    Args:
        sampler: ``sampler(pl_module, n) -> images`` returning `n` images in any form `log_gen_metrics`
            accepts (uint8, float in [0, 1] or in `value_range`; NCHW / NHWC tensors or arrays); called on
            every rank with that rank's share `n` of `num_samples`, the module in eval mode, under no_grad.
        reference: registry ref, ``.h5`` path or `ReferenceStats` (None: only metrics without a reference).
        num_samples: images scored per trigger, over all ranks together.
        every_n_train_steps: trigger when ``trainer.global_step`` is a positive multiple of it.
        every_n_epochs: trigger at the end of training epochs ``e`` with ``(e + 1) % every_n_epochs == 0``.
        metrics: metric names (default: the default set, skipping those whose inputs are unavailable).
        log_grid: also log the sample grid (``<prefix>samples``) at each trigger.
        **score_options: the options of :class:`genmetrics.plugin.options.ScoreOptions` that
            `log_gen_metrics` takes (``prefix``, ``value_range``, ``model``, ``kid_subsets``, ``seed``, ...),
            validated here; ``distributed`` is not one of them.

    Raises:
        ValueError: a trigger or option out of range, no trigger, an unknown metric, a `sampler` that is not
            callable.
        TypeError: an option `log_gen_metrics` does not take (the message lists the valid ones).
    """

    def __init__(self, sampler, reference, num_samples, every_n_train_steps=None, every_n_epochs=None,
                 metrics=None, log_grid=True, **score_options):
        super().__init__()
        if not callable(sampler):
            raise ValueError(f"sampler must be a callable sampler(pl_module, n) returning n images, got {sampler!r}")
        self.every_n_train_steps = _optional_positive("every_n_train_steps", every_n_train_steps)
        self.every_n_epochs = _optional_positive("every_n_epochs", every_n_epochs)
        if self.every_n_train_steps is None and self.every_n_epochs is None:
            raise ValueError("GenMetricsCallback needs a trigger: pass every_n_train_steps=... (optimizer steps) "
                             "and/or every_n_epochs=... (training epochs)")
        _check_metrics(metrics)
        opts = ScoreOptions.from_keywords(score_options, CALLBACK_OPTIONS, "GenMetricsCallback", metrics=metrics,
                                          num_samples=_positive("num_samples", num_samples))
        self.sampler, self.reference, self.num_samples, self.log_grid = sampler, reference, opts.num_samples, log_grid
        self._options = {name: getattr(opts, name) for name in CALLBACK_OPTIONS + ("metrics",)}
        self._where = None  # rank 0: (run_id, MlflowClient or None), found when fit starts
        self._last_step = None  # the global step scored last: one entry per key and step

    # ---- Lightning hooks ----------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module):
        """Find the run rank 0 logs to; any rank failing stops every rank (no rank waits in a collective)."""
        error = None
        if rank_and_world()[0] == 0:
            try:
                self._where = _find_run(trainer)
            except Exception as exc:  # noqa: BLE001 - under a process group every rank must learn of it
                error = exc
        check_all_ranks(error)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_train_steps is not None and step > 0 and step % self.every_n_train_steps == 0:
            self._score(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._score(trainer, pl_module)

    # ---- one trigger --------------------------------------------------------------------------------

    def _score(self, trainer, pl_module):
        """Draw this rank's share, score on every rank (ranks combine), rank 0 logs at ``trainer.global_step``."""
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        rank, world = rank_and_world()
        images = error = None
        try:
            images = _draw(self.sampler, pl_module, shard_size(self.num_samples, rank, world))
        except Exception as exc:  # noqa: BLE001 - a failing sampler stops every rank, none waits in scoring
            error = exc
        check_all_ranks(error)
        run_id, client = self._where if rank == 0 else (None, None)
        log_gen_metrics(images, reference=self.reference, step=step, run_id=run_id, client=client,
                        num_samples=self.num_samples, log_grid=self.log_grid, blocking=True, **self._options)


def _find_run(trainer):
    """(run_id, client) of the trainer's first `MLFlowLogger` (client: its MlflowClient, for its tracking URI), else
    (the active run's id, None: the fluent tracking URI); ValueError saying what to add when there is neither."""
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            return logger.run_id, logger.experiment
    run = mlflow.active_run()
    if run is None:
        raise ValueError("GenMetricsCallback needs an MLflow run to log to: add "
                         "lightning.pytorch.loggers.MLFlowLogger(tracking_uri=..., experiment_name=...) to "
                         "Trainer(logger=...), or call trainer.fit inside `with mlflow.start_run():`")
    return run.info.run_id, None


def _draw(sampler, pl_module, n):
    """``sampler(pl_module, n)`` with every submodule in eval mode and gradients off; each submodule's training
    flag is restored afterwards, also when the sampler raises."""
    modes = [(module, module.training) for module in pl_module.modules()]
    pl_module.eval()
    try:
        with torch.no_grad():
            return sampler(pl_module, n)
    finally:
        for module, training in modes:
            module.training = training
