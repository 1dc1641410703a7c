"""Time genmetrics' SSIM, MS-SSIM and LPIPS against pytorch-msssim, scikit-image and lpips on the same images.

    python scripts/bench_image_metrics.py [--images 16] [--size 256] [--repeats 3] [--nets alex,squeeze,vgg]

Images: real photographs from scikit-image (astronaut, coffee, chelsea, ...) resized to size x size, paired
with a noisy copy. Each timing is the best of --repeats runs after one warm-up run, ours and the peer's
runs alternating, on the CPU unless --device says otherwise. LPIPS backbones are seeded random torchvision
weights loaded into both implementations (lpips with pnet_rand=True; nothing is downloaded), so the two
compute the same numbers; the printed max |diff| checks that. The ratio is peer time / our time (> 1: ours is faster).
"""
import argparse
import os
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F


def _photos(count, size):
    import skimage.data

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "cat", "colorwheel")
    images = []
    for k in range(count):
        img = getattr(skimage.data, names[k % len(names)])()
        img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
        tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        images.append(F.interpolate(tensor, size=(size, size), mode="area")[0])
    x = torch.stack(images) / 255
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 0.1
    return x, (x + noise).clamp(0, 1)


def _run(fn, device):
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result


def _report(name, ours, peer_name, peer, repeats, device):
    """Best of `repeats` for each side, the two alternating (a busy machine slows both alike)."""
    ours_value, peer_value = _run(ours, device), _run(peer, device)  # warm-up
    ours_time = peer_time = float("inf")
    for _ in range(repeats):
        for fn, side in ((ours, "ours"), (peer, "peer")):
            start = time.perf_counter()
            _run(fn, device)
            elapsed = time.perf_counter() - start
            if side == "ours":
                ours_time = min(ours_time, elapsed)
            else:
                peer_time = min(peer_time, elapsed)
    diff = float((torch.as_tensor(ours_value).double().cpu().reshape(-1)
                  - torch.as_tensor(peer_value).double().cpu().reshape(-1)).abs().max())
    print(f"{name:<16} ours {ours_time * 1000:9.1f} ms   {peer_name:<22} {peer_time * 1000:9.1f} ms   "
          f"ratio {peer_time / ours_time:5.2f}x   max |diff| {diff:.1e}", flush=True)


def _lpips_pair(net, folder, device):
    import lpips
    import torchvision

    from genmetrics.stats import LPIPS
    from genmetrics.stats.networks.lpips import LPIPS_NETS

    torch.manual_seed(0)
    spec = LPIPS_NETS[net]
    state = {k: v for k, v in getattr(torchvision.models, spec.architecture)(weights=None).state_dict().items()
             if k.startswith("features.")}
    path = os.path.join(folder, f"{net}.pth")
    torch.save(state, path)
    ours = LPIPS(net, backbone_weights=path).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = lpips.LPIPS(net=net, pnet_rand=True, pretrained=True, verbose=False)
    peer.net.load_state_dict({k: state["features." + k.split(".", 1)[1]] for k in peer.net.state_dict()})
    return ours, peer.to(device).eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nets", default="alex,squeeze,vgg", help="LPIPS nets, comma-separated ('' for none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import pytorch_msssim
    from skimage.metrics import structural_similarity

    from genmetrics.stats import ms_ssim, ssim

    device = torch.device(args.device)
    x, y = _photos(args.images, args.size)
    print(f"{args.images} images {args.size}x{args.size}, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}", flush=True)
    x, y = x.to(device), y.to(device)
    x_np, y_np = x.permute(0, 2, 3, 1).double().cpu().numpy(), y.permute(0, 2, 3, 1).double().cpu().numpy()

    _report("ssim", lambda: ssim(x, y, data_range=1.0), "pytorch_msssim.ssim",
            lambda: pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False), args.repeats, device)
    _report("ssim", lambda: ssim(x, y, data_range=1.0), "skimage (float64)",
            lambda: [structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                           data_range=1.0, channel_axis=2) for a, b in zip(x_np, y_np)],
            args.repeats, device)
    _report("ssim float64", lambda: ssim(x, y, data_range=1.0, dtype=torch.float64), "skimage (float64)",
            lambda: [structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                           data_range=1.0, channel_axis=2) for a, b in zip(x_np, y_np)],
            args.repeats, device)
    if args.size > 160:
        _report("ms_ssim", lambda: ms_ssim(x, y, data_range=1.0), "pytorch_msssim.ms_ssim",
                lambda: pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False), args.repeats, device)

    nets = [n for n in args.nets.split(",") if n]
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        signed_x, signed_y = x * 2 - 1, y * 2 - 1
        for net in nets:
            ours, peer = _lpips_pair(net, folder, device)
            _report(f"lpips {net}", lambda: ours(signed_x, signed_y), "lpips.LPIPS",
                    lambda: peer(signed_x, signed_y), args.repeats, device)


if __name__ == "__main__":
    main()
