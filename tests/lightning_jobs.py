"""A toy generator trained by a real ``lightning.Trainer`` on the CPU with `GenMetricsCallback`, for
tests/test_plugin_lightning.py: in the test's process (one rank), or as this script under ``strategy="ddp"``
(Lightning starts the second rank by running this script again with LOCAL_RANK=1).

Usage: lightning_jobs.py OUT_DIR TRACKING_URI REFERENCE DEVICES. Every call of the sampler saves what it drew to
OUT_DIR/samples-step<global step>.rank<r>.npy and what it saw (training flags, grad mode) to
OUT_DIR/seen-step<step>.rank<r>.json; every training step records the module's and its frozen part's training
flags in OUT_DIR/modes.rank<r>.json.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the fixtures modules

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from fixtures_plugin_scoring import TinyExtractor  # noqa: E402

from genmetrics.plugin.lightning import GenMetricsCallback  # noqa: E402

SIZE = 16  # images are SIZE x SIZE
NUM_SAMPLES = 7  # per trigger over all ranks: shares 3 and 4 on two ranks
EVERY_N_STEPS = 2
MAX_STEPS = 4  # one epoch of 4 batches: the step trigger and the epoch trigger meet at step 4
#: the scoring options of the callback, and of the test's own log_gen_metrics on the same images
SCORE_OPTIONS = dict(metrics=("fid", "kid", "ssim"), kid_subsets=5, diversity_pairs=3, batch_size=4)


class ToyGenerator(L.LightningModule):
    """Noise (N, 8) -> images (N, 3, SIZE, SIZE) in [0, 1]; `frozen` is a part the user keeps in eval mode."""

    def __init__(self, out_dir):
        super().__init__()
        self.out_dir = out_dir
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 3 * SIZE * SIZE), torch.nn.Sigmoid())
        self.frozen = torch.nn.Dropout(0.5)
        self.modes = []

    def on_fit_start(self):
        self.frozen.eval()

    def generate(self, n, seed):
        z = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
        return self.frozen(self.net(z)).view(n, 3, SIZE, SIZE)

    def training_step(self, batch, batch_idx):
        self.modes.append({"step": self.global_step, "training": self.training, "frozen": self.frozen.training,
                           "grad": torch.is_grad_enabled()})
        with open(os.path.join(self.out_dir, f"modes.rank{self.global_rank}.json"), "w") as f:
            json.dump(self.modes, f)
        return (self.generate(len(batch), seed=batch_idx) - 0.3).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def sampler(module, n):
    """Draw `n` images (seeded by step and rank) and record them and the module's state."""
    step, rank = module.trainer.global_step, module.global_rank
    images = module.generate(n, seed=1000 * step + rank)
    np.save(os.path.join(module.out_dir, f"samples-step{step}.rank{rank}.npy"), images.numpy())
    seen = {"n": n, "training": module.training, "any_training": any(m.training for m in module.modules()),
            "grad": torch.is_grad_enabled()}
    with open(os.path.join(module.out_dir, f"seen-step{step}.rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    return images


def train(out_dir, tracking_uri, reference, devices=1, logger=True, strategy="ddp"):
    """Fit the toy generator for MAX_STEPS steps on the CPU; the callback logs to an MLFlowLogger's run on
    `tracking_uri` (experiment ``lightning``) when `logger`, else to the active run. Returns the trainer."""
    callback = GenMetricsCallback(sampler, reference, NUM_SAMPLES, every_n_train_steps=EVERY_N_STEPS,
                                  every_n_epochs=1, model=TinyExtractor(), **SCORE_OPTIONS)
    mlflow_logger = L.pytorch.loggers.MLFlowLogger(experiment_name="lightning", tracking_uri=tracking_uri)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy if devices > 1 else "auto",
                        max_steps=MAX_STEPS, callbacks=[callback], logger=mlflow_logger if logger else False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    data = torch.utils.data.DataLoader(torch.zeros(MAX_STEPS * devices, 1), batch_size=1)
    trainer.fit(ToyGenerator(out_dir), train_dataloaders=data)
    return trainer


if __name__ == "__main__":
    out, uri, ref, devices, strategy = (sys.argv[1:6] + ["ddp"])[:5]
    trained = train(out, uri, ref, devices=int(devices), strategy=strategy)
    if trained.global_rank == 0:
        with open(os.path.join(out, "run_id"), "w") as f:
            f.write(trained.logger.run_id)
