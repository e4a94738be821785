"""The image-VAE numbers table (docs/vae.md): Fashion-MNIST test set, nats per image, time per epoch.

Rows (each model trained through ``avseg.engine.trainer.train``, the function behind ``tools/train.py``):

* ``book``: configs/vae/fashion_vae.yaml (500 x mean BCE + KL, 2-D, 5 epochs). The book's logged values
  on the grey test set (the reconstruction term cannot go below the target-entropy floor, 92.7), the
  -ELBO in nats on grey targets, and on a fixed dynamic binarisation of the test set the -ELBO and the
  importance-weighted NLL bound.
* ``elbo2``: the same network under pythae's settings: summed BCE + KL (``loss=elbo``), 2-D, Adam 5e-4,
  batch 100, 5 epochs; -ELBO on the grey test set (pythae's metric) and time per epoch.
* ``pythae``: pythae 0.1.2's VAE with this architecture and those settings, run in the interpreter given
  by ``--pythae-python`` (a separate venv; pythae is not an avseg dependency); skipped when absent.
* ``elbo32``: configs/vae/fashion_vae_elbo32.yaml (Bernoulli VAE, 32-D, dynamically binarised training
  data); -ELBO and the IWAE NLL bound on the fixed binarised test set (the floor is 189.9 nats).

Usage::

    python benchmarks/vae_numbers.py --out runs/vae_numbers [--pythae-python /tmp/pythae-venv/bin/python]
        [--epochs 5] [--elbo32-epochs 20] [--iwae-samples 5000] [--iwae-images 200] [--threads 2]
        [--rows book,elbo2,pythae,elbo32]

Each row writes ``<out>/<row>/result.json`` and is not recomputed on a rerun (delete it to redo the row),
so rows may run as separate processes at once; every run prints the markdown table of the rows found and
writes it to ``<out>/table.md``. Times are seconds per epoch, wall clock and process CPU: training only,
and training plus the per-epoch validation pass over the 10,000 test images.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROWS = ("book", "elbo2", "pythae", "elbo32")


# ----------------------------------------------------------------------------- pythae worker (its own venv)
def pythae_worker(data_dir: str, epochs: int, threads: int, seed: int) -> None:
    """Train pythae's VAE with the book's Fashion network; print one JSON line of timings and -ELBO."""
    import numpy as np
    import torch
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.Flatten(),
            )
            self.embedding = nn.Linear(2048, 2)
            self.log_var = nn.Linear(2048, 2)

        def forward(self, x):
            h = self.features(x)
            return ModelOutput(embedding=self.embedding(h), log_covariance=self.log_var(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(2, 2048), nn.Unflatten(1, (128, 4, 4)),
                nn.ConvTranspose2d(128, 128, 3, 2, 1, 1), nn.ReLU(), nn.ConvTranspose2d(128, 64, 3, 2, 1, 1), nn.ReLU(),
                nn.ConvTranspose2d(64, 32, 3, 2, 1, 1), nn.ReLU(), nn.Conv2d(32, 1, 3, 1, 1), nn.Sigmoid(),
            )

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    class Timer(TrainingCallback):
        """Wall and process-CPU seconds of each epoch: training, and training plus evaluation."""

        def __init__(self):
            self.train, self.epoch, self.train_cpu, self.epoch_cpu, self.started = [], [], [], [], {}

        def on_epoch_begin(self, training_config, **kwargs):
            self.started["epoch"] = (time.perf_counter(), time.process_time())

        def on_train_step_begin(self, training_config, **kwargs):
            self.started["train"] = (time.perf_counter(), time.process_time())

        def on_eval_step_begin(self, training_config, **kwargs):
            wall, cpu = self.started["train"]
            self.train.append(time.perf_counter() - wall)
            self.train_cpu.append(time.process_time() - cpu)

        def on_epoch_end(self, training_config, **kwargs):
            wall, cpu = self.started["epoch"]
            self.epoch.append(time.perf_counter() - wall)
            self.epoch_cpu.append(time.process_time() - cpu)

    train = np.load(os.path.join(data_dir, "train.npy"))
    test = np.load(os.path.join(data_dir, "test.npy"))
    model = VAE(VAEConfig(input_dim=(1, 32, 32), latent_dim=2, reconstruction_loss="bce"), encoder=Encoder(), decoder=Decoder())
    config = BaseTrainerConfig(
        output_dir=os.path.join(data_dir, "pythae_run"), num_epochs=epochs, learning_rate=5e-4,
        per_device_train_batch_size=100, per_device_eval_batch_size=100, optimizer_cls="Adam", no_cuda=True, seed=seed,
    )
    timer = Timer()
    TrainingPipeline(training_config=config, model=model)(train_data=train, eval_data=test, callbacks=[timer])
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(test), 500):
            batch = torch.from_numpy(test[start : start + 500])
            total += model({"data": batch}).loss.item() * len(batch)
    import pythae

    timings = {"train_s": timer.train, "epoch_s": timer.epoch, "train_cpu_s": timer.train_cpu, "epoch_cpu_s": timer.epoch_cpu}
    print(json.dumps({**timings, "neg_elbo": total / len(test), "version": getattr(pythae, "__version__", "0.1.2")}))


# ----------------------------------------------------------------------------- avseg rows
def entropy_floors(cfg) -> dict:
    """Target-entropy floors of the padded grey test set: per pixel, x500 (book) and summed (nats/image)."""
    import torch

    from avseg.vae.data import build_vae_dataset

    pixels = build_vae_dataset(cfg, "test").images.double() / 255.0
    entropy = -(torch.special.xlogy(pixels, pixels) + torch.special.xlogy(1 - pixels, 1 - pixels))
    return {"per_pixel": entropy.mean().item(), "book_floor": 500 * entropy.mean().item(), "summed": entropy.sum(dim=(1, 2, 3)).mean().item()}


class TimedEvaluator:
    """Wraps the VAE evaluator to note wall and process-CPU time when each epoch's validation starts and ends."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.primary_metric, self.higher_is_better = evaluator.primary_metric, evaluator.higher_is_better
        self.marks = [(time.perf_counter(), time.process_time())]

    def evaluate(self, model, loader, device):
        self.marks.append((time.perf_counter(), time.process_time()))
        metrics = self.evaluator.evaluate(model, loader, device)
        self.marks.append((time.perf_counter(), time.process_time()))
        return metrics

    def epoch_times(self) -> dict:
        """Per epoch, wall and CPU: training (previous validation end -> this validation start) and the whole epoch."""
        starts, ends = self.marks[1::2], self.marks[2::2]
        previous = [self.marks[0]] + ends[:-1]
        times = {}
        for clock, suffix in ((0, "s"), (1, "cpu_s")):
            times[f"train_{suffix}"] = [start[clock] - before[clock] for start, before in zip(starts, previous)]
            times[f"epoch_{suffix}"] = [end[clock] - before[clock] for end, before in zip(ends, previous)]
        return times


def train_row(config: str, overrides, out: Path) -> dict:
    """Train through the shared trainer, validating every epoch; return per-epoch wall and CPU times.

    An interrupted run resumes from its ``last.pth``; the times then cover the epochs run this time.
    """
    from avseg.config import load_config
    from avseg.engine.trainer import train
    from avseg.vae.evaluation import VaeEvaluator

    cfg = load_config(config, list(overrides) + ["train.progress=false", "train.tensorboard=false", "device=cpu", "train.val_every=1"])
    timed = []

    def build_evaluator(config):
        timed.append(TimedEvaluator(VaeEvaluator(config)))
        return timed[-1]

    last = out / "last.pth"
    train(cfg, out=str(out), resume=str(last) if last.is_file() else None, build_evaluator=build_evaluator)
    return {"config": config, "overrides": list(overrides), "epochs": cfg.train.epochs, **timed[0].epoch_times()}


def evaluate_row(run: Path, binarize: str, iwae_samples: int, iwae_images: int, seed: int = 0) -> dict:
    """The evaluator's metrics of ``run/last.pth`` on the test set, grey or binarised, with the IWAE bound."""
    from torch.utils.data import DataLoader

    from avseg.config import apply_overrides
    from avseg.checkpoint import read_checkpoint
    from avseg.vae.data import build_vae_dataset
    from avseg.vae.evaluation import VaeEvaluator
    from avseg.vae.models import build_vae_model

    payload = read_checkpoint(run / "last.pth")
    overrides = [f"data.vae.binarize={binarize}", f"model.vae.iwae_samples={max(iwae_samples, 1)}", f"model.vae.iwae_images={iwae_images}", f"seed={seed}"]
    cfg = apply_overrides(payload["config"], overrides)
    model = build_vae_model(cfg)
    model.load_state_dict(payload["model"])
    loader = DataLoader(build_vae_dataset(cfg, "test", train=False), batch_size=100, shuffle=False)
    import torch

    started = time.perf_counter()
    metrics = VaeEvaluator(cfg).evaluate(model, loader, torch.device("cpu"))
    metrics["eval_s"] = time.perf_counter() - started
    return metrics


def run_pythae(python: str, out: Path, epochs: int, threads: int) -> dict:
    """Write the padded grey data as .npy and run :func:`pythae_worker` in ``python``."""
    import numpy as np

    from avseg.config import load_config
    from avseg.vae.data import build_vae_dataset

    cfg = load_config("vae/fashion_vae.yaml")
    out.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train.npy"), ("test", "test.npy")):
        images = build_vae_dataset(cfg, split).images.float().div(255.0).numpy()
        np.save(out / name, images)
    command = [python, os.path.abspath(__file__), "--pythae-worker", str(out), "--epochs", str(epochs), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if result.returncode != 0:
        raise RuntimeError(f"pythae worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _mean(values, skip_first: bool = True):
    values = values[1:] if skip_first and len(values) > 1 else values
    return sum(values) / len(values)


def format_table(results: dict, args) -> str:
    """The markdown numbers table of the rows in ``results``, with the floors and the speed ratio."""
    lines = [
        "| model (Fashion-MNIST test set, 32x32) | epochs | book loss = recon + KL | -ELBO, grey targets | -ELBO, binarised | IWAE NLL bound, binarised | train s/epoch (wall / CPU) | epoch s incl. validation (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def iwae(metrics):
        if "iwae_nll" not in metrics:
            return "–"
        return f"{metrics['iwae_nll']:.1f} (K={int(metrics['iwae_samples'])}, first {int(metrics['iwae_images'])} images)"

    def times(row):
        return f"{_mean(row['train_s']):.0f} / {_mean(row['train_cpu_s']):.0f} | {_mean(row['epoch_s']):.0f} / {_mean(row['epoch_cpu_s']):.0f}"

    if "book" in results:
        row = results["book"]
        grey, binary = row["grey"], row["binary"]
        book = f"{grey['loss']:.1f} = {grey['reconstruction_loss']:.1f} + {grey['kl_loss']:.2f}"
        lines.append(f"| book VAE: 2-D, 500 x mean BCE + KL | {row['epochs']} | {book} | {grey['neg_elbo']:.1f} | {binary['neg_elbo']:.1f} | {iwae(binary)} | {times(row)} |")
    if "elbo2" in results:
        row = results["elbo2"]
        lines.append(f"| avseg VAE, pythae's settings: 2-D, summed BCE + KL | {row['epochs']} | – | {row['grey']['neg_elbo']:.1f} | – | – | {times(row)} |")
    if "pythae" in results:
        row = results["pythae"]
        lines.append(f"| pythae {row.get('version', '0.1.2')} VAE, same network and settings | {len(row['epoch_s'])} | – | {row['neg_elbo']:.1f} | – | – | {times(row)} |")
    if "elbo32" in results:
        row = results["elbo32"]
        binary = row["binary"]
        lines.append(f"| Bernoulli VAE: 32-D, summed BCE + KL, dynamically binarised | {row['epochs']} | – | – | {binary['neg_elbo']:.1f} | {iwae(binary)} | {times(row)} |")
    notes = []
    floors = results.get("floors")
    if floors:
        notes.append(
            f"Floors: the book's reconstruction term >= {floors['book_floor']:.2f} (500 x {floors['per_pixel']:.4f} nats per pixel); "
            f"-ELBO on grey targets and any NLL of dynamically binarised test images >= {floors['summed']:.1f} nats."
        )
    if "elbo2" in results and "pythae" in results:
        ours, theirs = results["elbo2"], results["pythae"]
        ratios = [_mean(theirs[key]) / _mean(ours[key]) for key in ("train_s", "train_cpu_s", "epoch_s", "epoch_cpu_s")]
        notes.append("Speed, pythae time / avseg time per epoch: training {:.2f}x wall, {:.2f}x CPU; with validation {:.2f}x wall, {:.2f}x CPU.".format(*ratios))
    threads = sorted({row.get("threads", args.threads) for key, row in results.items() if key != "floors"})
    notes.append(f"Times: mean over epochs 2..n (epoch 1 includes warm-up), {'/'.join(map(str, threads))} torch thread(s). Binarised: one fixed Bernoulli draw of the test images (seed 0).")
    return "\n".join(lines + [""] + notes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/vae_numbers")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the book, elbo2 and pythae rows (the book's 5)")
    parser.add_argument("--elbo32-epochs", type=int, default=10)
    parser.add_argument("--iwae-samples", type=int, default=5000)
    parser.add_argument("--iwae-images", type=int, default=200, help="test images that get the IWAE bound (each costs K decoder passes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pythae-python", help="python of a venv with pythae 0.1.2 installed (default: this one, if it imports pythae)")
    parser.add_argument("--pythae-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pythae_worker:
        pythae_worker(args.pythae_worker, args.epochs, args.threads, seed=8)
        return 0

    import torch

    from avseg.config import load_config

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown} (rows: {', '.join(ROWS)})")
    iwae = (args.iwae_samples, args.iwae_images)
    epochs = f"train.epochs={args.epochs}"
    for row in rows:
        result_path = out / row / "result.json"
        if result_path.is_file():
            continue
        started = time.perf_counter()
        if row == "book":
            result = train_row("vae/fashion_vae.yaml", [epochs], out / row)
            result["grey"] = evaluate_row(out / row, "none", 1, 0)
            result["binary"] = evaluate_row(out / row, "dynamic", *iwae)
        elif row == "elbo2":
            result = train_row("vae/fashion_vae.yaml", [epochs, "model.vae.loss=elbo", "model.vae.kl_weight=1.0"], out / row)
            result["grey"] = evaluate_row(out / row, "none", 1, 0)
        elif row == "pythae":
            python = args.pythae_python or sys.executable
            if subprocess.run([python, "-c", "import pythae"], capture_output=True).returncode != 0:
                print(f"pythae row skipped: '{python}' cannot import pythae (pass --pythae-python of a venv with pythae 0.1.2)")
                continue
            result = run_pythae(python, out / row, args.epochs, args.threads)
        else:
            result = train_row("vae/fashion_vae_elbo32.yaml", [f"train.epochs={args.elbo32_epochs}", "model.vae.iwae_images=0"], out / row)
            result["binary"] = evaluate_row(out / row, "dynamic", *iwae)
        result.update(wall_s=time.perf_counter() - started, threads=args.threads)
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(result, indent=2) + "\n")
    results = {row: json.loads((out / row / "result.json").read_text()) for row in ROWS if (out / row / "result.json").is_file()}
    results["floors"] = entropy_floors(load_config("vae/fashion_vae.yaml"))
    table = format_table(results, args)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
