"""Benchmark: ``genmetrics.stats.clip_score`` images/s against ``open_clip`` on the same (random) CLIP weights, CPU.

    python scripts/bench_clip_score.py [--model ViT-B-32] [--images 64] [--batch-size 32] [--repeats 3]

Builds open_clip's OpenAI architecture (QuickGELU) with seeded random weights, saves its state dict (OpenAI's key
layout) to a temporary file and loads our towers from it (``load_clip_model``), so both run identical weights.
Inputs: `images` random uint8 images at the model's resolution and as many COCO-style captions (8 to 16 words).
Each repeat times, side by side in alternating order, one full score on the same inputs:

- ours: ``clip_score(images, captions, model=<loaded>, batch_size=B)`` (tokenize, preprocess, both towers, formula);
- open_clip: ``open_clip.tokenize``, CLIP's mean/std normalisation, ``encode_image`` and ``encode_text`` per batch of
  B under ``torch.inference_mode``, then ``mean(100 max(cos, 0))``.

Prints the median images/s of each, the ratio (ours / open_clip; > 1 = ours faster) and the two scores, which agree
to ~1e-4 (the images are already at the input size, so both preprocessings are the normalisation).
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

WORDS = ("a man woman dog cat bus train red blue small large riding sitting on top of the near street beach "
         "table with plate food kitchen window two people playing frisbee park tennis court white building").split()


def _captions(n, generator):
    lengths = torch.randint(8, 17, (n,), generator=generator)
    picks = [torch.randint(0, len(WORDS), (int(k),), generator=generator) for k in lengths]
    return [" ".join(WORDS[i] for i in pick) for pick in picks]


def _open_clip_score(model, images, captions, batch_size):
    import open_clip

    from genmetrics.stats.networks.clip import CLIP_MEAN, CLIP_STD

    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    tokens, cosines = open_clip.tokenize(captions), []
    with torch.inference_mode():
        for start in range(0, len(captions), batch_size):
            x = (images[start:start + batch_size].float() / 255 - mean) / std
            image = model.encode_image(x)
            text = model.encode_text(tokens[start:start + batch_size])
            cosines.append(torch.nn.functional.cosine_similarity(image, text))
    return float((100 * torch.cat(cosines).clamp(min=0)).mean())


def _timed(run):
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", choices=["ViT-B-32", "ViT-L-14", "ViT-L-14-336"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import open_clip

    from genmetrics.stats import clip_score
    from genmetrics.stats.networks.clip_text import load_clip_model

    name = {"ViT-B-32": "clip-vit-b-32", "ViT-L-14": "clip-vit-l-14", "ViT-L-14-336": "clip-vit-l-14-336px"}[args.model]
    torch.manual_seed(0)
    reference = open_clip.create_model(args.model, pretrained=None, force_quick_gelu=True).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "weights.pth")
        torch.save(reference.state_dict(), path)
        ours = load_clip_model(name, weights=path, device="cpu", progress=False)
    generator = torch.Generator().manual_seed(1)
    size = reference.visual.image_size[0]
    images = torch.randint(0, 256, (args.images, 3, size, size), dtype=torch.uint8, generator=generator)
    captions = _captions(args.images, generator)
    runs = {"genmetrics": lambda: clip_score(images, captions, model=ours, batch_size=args.batch_size),
            "open_clip": lambda: _open_clip_score(reference, images, captions, args.batch_size)}
    seconds, scores = {key: [] for key in runs}, {}
    for repeat in range(args.repeats):
        for key in (list(runs) if repeat % 2 == 0 else list(runs)[::-1]):
            elapsed, scores[key] = _timed(runs[key])
            seconds[key].append(elapsed)
    rates = {key: args.images / statistics.median(times) for key, times in seconds.items()}
    print(f"{args.model}, {args.images} images of {size} px + captions, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads, {args.repeats} repeats (median)")
    for key, rate in rates.items():
        print(f"{key:<11} {rate:8.2f} images/s   score {scores[key]:.6f}")
    print(f"ratio genmetrics / open_clip: {rates['genmetrics'] / rates['open_clip']:.2f}")


if __name__ == "__main__":
    main()
