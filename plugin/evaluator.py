"""``mlflow.models.evaluate`` plugin: FID / KID / IS / SSIM / MS-SSIM / LPIPS of generated images.

Registered as the ``mlflow.model_evaluator`` entry point ``genmetrics``::

    mlflow.models.evaluate(
        data=df,                                  # one row per generated image
        model_type="image-generation",
        evaluators=["genmetrics"],
        evaluator_config={"genmetrics": {"reference": "cifar10-train-32", "metrics": ["fid", "kid"],
                                         "image_column": "image"}},
    )

Where the images come from:

* ``model=None`` (pre-generated outputs): the column ``image_column`` of ``data``; without it, the
  ``predictions=`` column of ``mlflow.models.evaluate``, or the only column of ``data``.
* a model (pyfunc or callable): its predictions on ``data`` are the images.

Each cell is an image file path, encoded image bytes, or a uint8 / float [0, 1] (H, W, C) array.
Paired targets (for SSIM / MS-SSIM / LPIPS) come from ``target_column`` or ``targets=``. The prompts of the
images (for ``clip_score``: one text per row, in order) come from ``prompts_column``, a column of ``data``.
Config keys: ``reference`` (registry ref, ``.h5`` path or ``ReferenceStats``), ``image_column``,
``target_column``, ``prompts_column``, ``step`` (default 0); every other key is an option of ``log_gen_metrics``,
i.e. of :class:`genmetrics.plugin.options.ScoreOptions` (``metrics``, ``prefix``, ``batch_size``, ``device``, ``mode``,
``seed``, ``value_range``, ...; their defaults are its defaults), and an unknown key is a TypeError listing them.

Lineage: the reference file becomes a dataset input of the evaluation run (context ``reference``, as for
``log_gen_metrics``). With ``mlflow.models.evaluate(..., model_id=...)`` (or a logged model; MLflow >= 3) the
metrics are linked to that LoggedModel as measured on the reference dataset; MLflow then logs the returned
metrics to the model once more, against the evaluation data.
"""
import io
import os

import numpy as np
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator

__all__ = ["GenMetricsEvaluator", "MODEL_TYPE"]

MODEL_TYPE = "image-generation"
#: Config keys that are no scoring option.
_OWN_KEYS = ("reference", "image_column", "target_column", "prompts_column", "step")


def _load_image(cell):
    """One cell -> the image, which the one image normaliser (:mod:`genmetrics.stats.images.image_input`) reads as a
    single image: a file path or encoded bytes decoded as image folders are (``image_files.load_image``: RGB, the
    decompression-bomb limit, errors naming the file) into a uint8 (3, H, W) tensor, or the array itself."""
    import torch

    from genmetrics.stats.images.image_files import load_image

    if isinstance(cell, (str, os.PathLike)):
        if not os.path.isfile(cell):
            raise FileNotFoundError(f"image file {os.fspath(cell)!r} not found; image paths are read relative to "
                                    f"the current directory {os.getcwd()!r}")
        with open(cell, "rb") as file:
            return torch.from_numpy(load_image(file, os.fspath(cell)).transpose(2, 0, 1).copy())
    if isinstance(cell, (bytes, bytearray)):
        return torch.from_numpy(load_image(io.BytesIO(cell), "(encoded image bytes)").transpose(2, 0, 1).copy())
    array = np.asarray(cell)
    if array.ndim not in (2, 3):
        raise ValueError(f"an image cell must be a path, encoded bytes or an (H, W, C) array; got shape {array.shape}")
    return array


def _column(frame, name, what):
    if name not in frame.columns:
        raise ValueError(f"{what} column {name!r} is not in the data; its columns are {list(frame.columns)}")
    return list(frame[name])


def _image_cells(model, dataset, config):
    features = dataset.features_data
    if model is not None:
        output = model.predict(features)
        if hasattr(output, "columns"):  # a DataFrame: the image column, or its only column
            name = config.get("image_column") or (output.columns[0] if len(output.columns) == 1 else None)
            if name is None:
                raise ValueError(
                    f"the model returned columns {list(output.columns)}; set evaluator_config image_column "
                    "to the one holding the images"
                )
            return _column(output, name, "image")
        return list(output)
    if config.get("image_column"):
        if dataset.predictions_name == config["image_column"]:
            return list(dataset.predictions_data)
        return _column(features, config["image_column"], "image")
    if dataset.predictions_data is not None:
        return list(dataset.predictions_data)
    if len(features.columns) == 1:
        return list(features[features.columns[0]])
    raise ValueError(
        f"cannot tell which column holds the images among {list(features.columns)}; set evaluator_config "
        "{'genmetrics': {'image_column': ...}} or pass predictions=<column> to mlflow.models.evaluate"
    )


def _target_cells(dataset, config):
    if config.get("target_column"):
        return _column(dataset.features_data, config["target_column"], "target")
    if dataset.labels_data is not None:
        return list(dataset.labels_data)
    return None


class GenMetricsEvaluator(ModelEvaluator):
    """Scores generated images with ``genmetrics`` and logs the metrics to the evaluation run."""

    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs):
        """Only ``model_type="image-generation"``, so that ``evaluators=None`` never picks it for tabular models."""
        return model_type == MODEL_TYPE

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, **kwargs):
        """Score the images of ``dataset`` (or the model's output on it) and log the metrics to ``run_id``, linked
        to the LoggedModel ``kwargs["model_id"]`` when MLflow (>= 3) passes one."""
        from .log_metrics import log_gen_metrics

        config = dict(evaluator_config or {})
        images = _image_cells(model, dataset, config)
        if not images:
            raise ValueError("there are no images to evaluate: the data has no rows")
        target_cells = _target_cells(dataset, config)
        targets = None
        if target_cells is not None:
            if len(target_cells) != len(images):
                raise ValueError(f"{len(images)} images but {len(target_cells)} targets; pass one target per image")
            targets = [_load_image(cell) for cell in target_cells]
        prompts = None
        if config.get("prompts_column"):
            prompts = _column(dataset.features_data, config["prompts_column"], "prompts")
        metrics = log_gen_metrics(
            (_load_image(cell) for cell in images),
            reference=config.get("reference"),
            step=int(config.get("step", 0)),
            targets=targets,
            prompts=prompts,
            run_id=run_id,
            model_id=kwargs.get("model_id"),
            **{k: v for k, v in config.items() if k not in _OWN_KEYS},
        )
        return EvaluationResult(metrics=dict(metrics), artifacts={}, run_id=run_id)
