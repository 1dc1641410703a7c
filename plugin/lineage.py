"""MLflow lineage of a score: the reference as a dataset input of the run, the model the metrics belong to.

The reference a score was measured against is described as an MLflow dataset (the run's "Datasets used"):

- ``name``: the registry ref (``cifar10-train-32``) when the file verified as that entry's cached file, else the
  file's name (``my-stats.h5``);
- ``digest``: the first `DIGEST_CHARS` hex digits of the ``.h5`` file's sha256 (the ``<prefix>reference_sha256``
  provenance tag holds all 64; MLflow takes at most 36);
- ``source``: where it came from: the entry's first download URL (source type ``http``, or ``local`` for a
  ``file:`` URL) or the file's path (``local``), URLs without userinfo, query string and fragment
  (:func:`genmetrics.stats.download.redact_url`);
- ``profile``: JSON of the reference's sample count, registry version and full sha256;
- input tag ``mlflow.data.context`` = ``"reference"``.

Everything comes from the provenance that scoring computed or verified (`ScoreResult.params`), never from what a
file says about itself. Statistics held in memory (no file, hence no hash) give no dataset input. The sender adds
the input once per run (``log_inputs`` in `genmetrics.plugin.spool`), not at every step.

The model (MLflow >= 3): with a LoggedModel id (``log_gen_metrics(model_id=...)``, default MLflow's active model as
for ``mlflow.log_metrics``) every metric of the batch is also that model's, with the reference as its dataset, so
the numbers appear on the model's page (``MlflowClient().get_logged_model(id).metrics``). An id the tracking
server does not know, or an MLflow without LoggedModels, logs the metrics to the run only, with one warning.
"""
import json
import os

__all__ = ["DIGEST_CHARS", "REFERENCE_CONTEXT", "reference_dataset"]

#: Hex digits of the reference file's sha256 used as the MLflow dataset digest (64 bits; MLflow allows 36 chars).
DIGEST_CHARS = 16
#: The value of the input tag ``mlflow.data.context`` that marks a dataset input as the score's reference.
REFERENCE_CONTEXT = "reference"


def _registry_source(ref):
    """(source_type, source JSON) of a registry entry: its first download URL, redacted; the ref alone when the
    manifests cannot be read now."""
    from genmetrics.registry.manifest import resolve
    from genmetrics.stats.download import redact_url

    try:
        url = redact_url(resolve(ref).sources[0].url)
    except (ValueError, KeyError, OSError, RuntimeError, IndexError):  # verified moments ago; a manifest gone now
        return "genmetrics_registry", json.dumps({"ref": ref})
    if url.lower().startswith("file:"):
        return "local", json.dumps({"uri": url})
    return "http", json.dumps({"url": url})


def reference_dataset(params, prefix):
    """The reference of one score as a dataset input (a JSON-able dict for the spool's ``log_inputs``), or None.

    `params` is ``ScoreResult.params`` (keys prefixed with `prefix`). None when no reference file was used (no
    ``<prefix>reference_sha256``). Returns ``{"name", "digest", "source_type", "source", "profile"}``.
    """
    sha256 = params.get(f"{prefix}reference_sha256")
    reference = params.get(f"{prefix}reference")
    if not sha256 or not reference:
        return None
    if os.path.isabs(reference):  # a file that is no registry entry: named by its path (see scoring)
        name, (source_type, source) = os.path.basename(reference), ("local", json.dumps({"uri": reference}))
    else:
        name, (source_type, source) = reference, _registry_source(reference)
    count = params.get(f"{prefix}reference_num_samples")
    profile = {"num_samples": int(count) if count and count.isdigit() else count,
               "version": params.get(f"{prefix}reference_version"), "sha256": sha256}
    return {"name": name, "digest": sha256[:DIGEST_CHARS], "source_type": source_type, "source": source,
            "profile": json.dumps({k: v for k, v in profile.items() if v is not None})}
