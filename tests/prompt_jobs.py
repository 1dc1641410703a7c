"""Run under `torchrun --standalone --nproc_per_node=2` by tests/test_plugin_prompts.py: each rank scores clip_score
of its share of the samples with its own prompts and writes what it got to OUT/rank<r>.json.

Usage: prompt_jobs.py OUT PROMPTS_JSON (the images are OUT/images.npy; the weights come from the environment).
"""
import json
import os
import sys

import numpy as np
import torch.distributed as dist


def main():
    out, prompts = sys.argv[1], json.loads(sys.argv[2])
    dist.init_process_group("gloo")
    try:
        from genmetrics.plugin import score_samples
        from genmetrics.stats.streaming.distributed import shard_size

        rank, world = dist.get_rank(), dist.get_world_size()
        images = np.load(os.path.join(out, "images.npy"))
        start = sum(shard_size(len(images), r, world) for r in range(rank))
        stop = start + shard_size(len(images), rank, world)
        result = score_samples(images[start:stop], metrics=["clip_score"], prompts=prompts[start:stop],
                               batch_size=2, device="cpu")
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"metrics": result.metrics, "prompts_sha256": result.params["gen/prompts_sha256"]}, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
