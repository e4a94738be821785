"""The image-VAE numbers table (docs/vae.md): Fashion-MNIST test set, nats per image, time per epoch.

Rows (each model trained through ``avseg.engine.trainer.train``, the function behind ``tools/train.py``):

* ``book``: configs/vae/fashion_vae.yaml (500 x mean BCE + KL, 2-D, 5 epochs). The book's logged values
  on the grey test set (the reconstruction term cannot go below the target-entropy floor, 92.7), the
  -ELBO in nats on grey targets, and on a fixed dynamic binarisation of the test set the -ELBO and the
  importance-weighted NLL bound.
* ``elbo2``: the same network under pythae's settings: summed BCE + KL (``loss=elbo``), 2-D, Adam 5e-4,
  batch 100, 5 epochs; -ELBO on the grey test set (pythae's metric) and time per epoch.
* ``elbo2_bf16``: the same with ``train.amp=bf16`` (bfloat16 autocast on the CPU, float32 losses).
* ``pythae``: pythae 0.1.2's VAE with this architecture and those settings, run in the interpreter given
  by ``--pythae-python`` (a separate venv; pythae is not an avseg dependency); skipped when absent.
* ``elbo32``: configs/vae/fashion_vae_elbo32.yaml (Bernoulli VAE, 32-D, dynamically binarised training
  data); -ELBO and the IWAE NLL bound on the fixed binarised test set (the floor is 189.9 nats).
* ``speed``: interleaved training runs of ``--steps`` batches (600: whole epochs), ``--rounds`` times:
  avseg's trainer with each ``--amp``, then pythae with each ``--pythae-allocators`` (``tuned``: glibc
  malloc set through the environment as avseg's ``train.cpu_allocator`` sets it in-process).

Usage::

    python benchmarks/vae_numbers.py --out runs/vae_numbers [--pythae-python /tmp/pythae-venv/bin/python]
        [--epochs 5] [--elbo32-epochs 10] [--iwae-samples 5000] [--iwae-images 200] [--threads 2]
        [--rows book,elbo2,elbo2_bf16,pythae,elbo32,speed] [--steps 600] [--rounds 3] [--amp off,bf16]
        [--pythae-allocators system,tuned]

Each row keeps its stages (training, then each evaluation) in ``<out>/<row>/result.json``; a rerun
skips finished stages (delete the file to redo a row) and resumes an interrupted training from its
``last.pth``, so rows may run as separate processes at once; every run prints the markdown table of the rows found and
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

ROWS = ("book", "elbo2", "elbo2_bf16", "pythae", "elbo32", "speed")


# ----------------------------------------------------------------------------- pythae worker (its own venv)
def pythae_worker(data_dir: str, epochs: int, threads: int, seed: int, steps: int = 0) -> None:
    """Train pythae's VAE with the book's Fashion network; print one JSON line of timings and -ELBO.

    ``steps`` > 0: a speed probe instead, one epoch of that many batches without evaluation.
    """
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
    if steps:
        train, epochs = train[: steps * 100], 1
    model = VAE(VAEConfig(input_dim=(1, 32, 32), latent_dim=2, reconstruction_loss="bce"), encoder=Encoder(), decoder=Decoder())
    config = BaseTrainerConfig(
        output_dir=os.path.join(data_dir, "pythae_run"), num_epochs=epochs, learning_rate=5e-4,
        per_device_train_batch_size=100, per_device_eval_batch_size=100, optimizer_cls="Adam", no_cuda=True, seed=seed,
    )
    timer = Timer()
    TrainingPipeline(training_config=config, model=model)(train_data=train, eval_data=None if steps else test, callbacks=[timer])
    timings = {"train_s": timer.train, "epoch_s": timer.epoch, "train_cpu_s": timer.train_cpu, "epoch_cpu_s": timer.epoch_cpu}
    if steps:
        print(json.dumps(timings))
        return
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(test), 500):
            batch = torch.from_numpy(test[start : start + 500])
            total += model({"data": batch}).loss.item() * len(batch)
    import pythae

    print(json.dumps({**timings, "neg_elbo": total / len(test), "version": getattr(pythae, "__version__", "0.1.2")}))


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


class StepTimer:
    """A stand-in evaluator for speed probes: notes wall and CPU time at the end of the epoch, evaluates nothing."""

    primary_metric, higher_is_better = "loss", False

    def __init__(self):
        self.marks = [(time.perf_counter(), time.process_time())]

    def evaluate(self, model, loader, device):
        self.marks.append((time.perf_counter(), time.process_time()))
        return {"loss": 0.0}


def speed_row(args, out: Path) -> dict:
    """Interleaved runs of ``--steps`` batches, ``--rounds`` times: avseg with each amp, then pythae with each allocator."""
    from avseg.config import load_config
    from avseg.engine.trainer import train

    python = args.pythae_python or sys.executable
    has_pythae = subprocess.run([python, "-c", "import pythae"], capture_output=True).returncode == 0
    overrides = [
        "model.vae.loss=elbo", "model.vae.kl_weight=1.0", "train.epochs=1", f"train.max_steps_per_epoch={args.steps}",
        "train.val_every=1", "train.progress=false", "train.tensorboard=false", "device=cpu",
    ]
    runs = []
    for round_index in range(args.rounds):
        for amp in _names(args.amp):
            timer = StepTimer()
            train(load_config("vae/fashion_vae.yaml", overrides + [f"train.amp={amp}"]), out=str(out / f"avseg_{amp}_{round_index}"),
                  build_evaluator=lambda cfg: timer)
            (start_wall, start_cpu), (end_wall, end_cpu) = timer.marks[0], timer.marks[1]
            runs.append({"run": f"avseg, train.amp={amp}", "ms": 1000 * (end_wall - start_wall) / args.steps,
                         "cpu_ms": 1000 * (end_cpu - start_cpu) / args.steps})
        for allocator in _names(args.pythae_allocators) if has_pythae else []:
            probe = run_pythae(python, out.parent / "pythae", 1, args.threads, steps=args.steps, allocator=allocator)
            runs.append({"run": f"pythae, {allocator} malloc", "ms": 1000 * probe["epoch_s"][0] / args.steps,
                         "cpu_ms": 1000 * probe["epoch_cpu_s"][0] / args.steps})
    return {"steps": args.steps, "rounds": args.rounds, "runs": runs}


def _names(text: str):
    return [name.strip() for name in text.split(",") if name.strip()]


def evaluate_row(run: Path, binarize: str, iwae_samples: int = 1, iwae_images: int = 0, max_images: int = 0, seed: int = 0) -> dict:
    """The evaluator's metrics of ``run/last.pth`` on the test set (or its first ``max_images``), grey or binarised."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from avseg.checkpoint import read_checkpoint
    from avseg.config import apply_overrides
    from avseg.vae.data import build_vae_dataset
    from avseg.vae.evaluation import VaeEvaluator
    from avseg.vae.models import build_vae_model

    payload = read_checkpoint(run / "last.pth")
    overrides = [f"data.vae.binarize={binarize}", f"model.vae.iwae_samples={iwae_samples}", f"model.vae.iwae_images={iwae_images}", f"seed={seed}"]
    cfg = apply_overrides(payload["config"], overrides)
    model = build_vae_model(cfg)
    model.load_state_dict(payload["model"])
    dataset = build_vae_dataset(cfg, "test", train=False)
    if max_images:
        dataset = Subset(dataset, range(max_images))
    started = time.perf_counter()
    metrics = VaeEvaluator(cfg).evaluate(model, DataLoader(dataset, batch_size=100, shuffle=False), torch.device("cpu"))
    metrics["eval_s"] = time.perf_counter() - started
    return metrics


def run_pythae(python: str, out: Path, epochs: int, threads: int, steps: int = 0, allocator: str = "system") -> dict:
    """Write the padded grey data as .npy (once) and run :func:`pythae_worker` in ``python``.

    ``allocator`` ``tuned``: the worker's glibc malloc gets avseg's tuned settings through the environment.
    """
    import numpy as np

    from avseg.config import load_config
    from avseg.vae.data import build_vae_dataset

    cfg = load_config("vae/fashion_vae.yaml")
    out.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train.npy"), ("test", "test.npy")):
        if not (out / name).is_file():
            np.save(out / name, build_vae_dataset(cfg, split).images.float().div(255.0).numpy())
    command = [python, os.path.abspath(__file__), "--pythae-worker", str(out), "--epochs", str(epochs), "--threads", str(threads), "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if allocator == "tuned":
        from avseg.engine.run_setup import TUNED_MALLOC

        env.update({f"MALLOC_{name}_": str(value) for name, value in TUNED_MALLOC.items()})
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"pythae worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _median(values):
    return sorted(values)[len(values) // 2]


def _mean(values, skip_first: bool = True):
    values = values[1:] if skip_first and len(values) > 1 else values
    return sum(values) / len(values)


def format_table(results: dict, args) -> str:
    """The markdown numbers table of the rows in ``results``, with the floors and the speed ratio."""
    lines = [
        "| model (Fashion-MNIST test set, 32x32) | epochs | book loss = recon + KL | -ELBO, grey targets | -ELBO, binarised | IWAE NLL bound, binarised | train s/epoch (wall / CPU) | epoch s incl. validation (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def iwae(row):
        metrics = row["binary"]
        if "iwae_nll" not in metrics:
            return "–"
        text = f"{metrics['iwae_nll']:.1f} (K={int(metrics['iwae_samples'])}, first {int(metrics['iwae_images'])} images"
        if "binary_first" in row:
            text += f"; their -ELBO {row['binary_first']['neg_elbo']:.1f}"
        return text + ")"

    def times(row):
        if not row.get("train_s"):  # a training resumed after its last epoch has no timings
            return "– | –"
        return f"{_mean(row['train_s']):.0f} / {_mean(row['train_cpu_s']):.0f} | {_mean(row['epoch_s']):.0f} / {_mean(row['epoch_cpu_s']):.0f}"

    if "book" in results:
        row = results["book"]
        grey, binary = row["grey"], row["binary"]
        book = f"{grey['loss']:.1f} = {grey['reconstruction_loss']:.1f} + {grey['kl_loss']:.2f}"
        lines.append(f"| book VAE: 2-D, 500 x mean BCE + KL | {row['epochs']} | {book} | {grey['neg_elbo']:.1f} | {binary['neg_elbo']:.1f} | {iwae(row)} | {times(row)} |")
    if "elbo2" in results:
        row = results["elbo2"]
        lines.append(f"| avseg VAE, pythae's settings: 2-D, summed BCE + KL | {row['epochs']} | – | {row['grey']['neg_elbo']:.1f} | – | – | {times(row)} |")
    if "elbo2_bf16" in results:
        row = results["elbo2_bf16"]
        lines.append(f"| the same, train.amp=bf16 | {row['epochs']} | – | {row['grey']['neg_elbo']:.1f} | – | – | {times(row)} |")
    if "pythae" in results:
        row = results["pythae"]
        lines.append(f"| pythae {row.get('version', '0.1.2')} VAE, same network and settings | {len(row['epoch_s'])} | – | {row['neg_elbo']:.1f} | – | – | {times(row)} |")
    if "elbo32" in results:
        row = results["elbo32"]
        binary = row["binary"]
        lines.append(f"| Bernoulli VAE: 32-D, summed BCE + KL, dynamically binarised | {row['epochs']} | – | – | {binary['neg_elbo']:.1f} | {iwae(row)} | {times(row)} |")
    notes = []
    floors = results.get("floors")
    if floors:
        notes.append(
            f"Floors: the book's reconstruction term >= {floors['book_floor']:.2f} (500 x {floors['per_pixel']:.4f} nats per pixel); "
            f"-ELBO on grey targets and any NLL of dynamically binarised test images >= {floors['summed']:.1f} nats."
        )
    for name in ("elbo2", "elbo2_bf16"):
        if name in results and "pythae" in results and results[name].get("train_s"):
            ours, theirs = results[name], results["pythae"]
            ratios = [_mean(theirs[key]) / _mean(ours[key]) for key in ("train_s", "train_cpu_s", "epoch_s", "epoch_cpu_s")]
            notes.append(f"Speed of the whole runs, pythae time / {name} time per epoch: "
                         "training {:.2f}x wall, {:.2f}x CPU; with validation {:.2f}x wall, {:.2f}x CPU.".format(*ratios))
    if "speed" in results:
        row = results["speed"]
        medians = {}
        for run in row["runs"]:
            medians.setdefault(run["run"], ([], []))
            medians[run["run"]][0].append(run["ms"])
            medians[run["run"]][1].append(run["cpu_ms"])
        medians = {name: (_median(wall), _median(cpu)) for name, (wall, cpu) in medians.items()}
        reference = medians.get("pythae, system malloc")
        parts = []
        for name, (wall, cpu) in medians.items():
            text = f"{name} {wall:.0f} ms/step wall, {cpu:.0f} CPU"
            if reference and not name.startswith("pythae, system"):
                text += f" (pythae with system malloc takes {reference[0] / wall:.2f}x this wall time, {reference[1] / cpu:.2f}x this CPU time)"
            parts.append(text)
        notes.append(f"Speed ({row['rounds']} interleaved rounds of {row['steps']} training batches, medians): " + "; ".join(parts) + ".")
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
    parser.add_argument("--steps", type=int, default=600, help="batches per run of the 'speed' row (600: a whole epoch)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of interleaved runs of the 'speed' row")
    parser.add_argument("--amp", default="off,bf16", help="avseg's train.amp values in the 'speed' row (pythae: float32)")
    parser.add_argument("--pythae-allocators", default="system", help="'speed' row: pythae runs with glibc's default malloc (system) and/or avseg's tuned settings (tuned)")
    parser.add_argument("--pythae-python", help="python of a venv with pythae 0.1.2 installed (default: this one, if it imports pythae)")
    parser.add_argument("--pythae-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pythae_worker:
        pythae_worker(args.pythae_worker, args.epochs, args.threads, seed=8, steps=args.steps)
        return 0

    import torch

    from avseg.config import load_config

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _names(args.rows)
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown} (rows: {', '.join(ROWS)})")
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")
    allocators = _names(args.pythae_allocators)
    if not set(allocators) <= {"system", "tuned"}:
        parser.error(f"--pythae-allocators: expected system and/or tuned, got {args.pythae_allocators}")
    iwae = (args.iwae_samples, args.iwae_images)
    epochs = f"train.epochs={args.epochs}"
    for row in rows:
        result_path = out / row / "result.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        stages = {
            "book": ("vae/fashion_vae.yaml", [epochs], ("grey", "binary", "binary_first")),
            "elbo2": ("vae/fashion_vae.yaml", [epochs, "model.vae.loss=elbo", "model.vae.kl_weight=1.0"], ("grey",)),
            "elbo2_bf16": ("vae/fashion_vae.yaml", [epochs, "model.vae.loss=elbo", "model.vae.kl_weight=1.0", "train.amp=bf16"], ("grey",)),
            "elbo32": ("vae/fashion_vae_elbo32.yaml", [f"train.epochs={args.elbo32_epochs}", "model.vae.iwae_images=0"], ("binary", "binary_first")),
        }
        if row == "speed":
            if "runs" not in result:
                result = {**speed_row(args, out / row), "threads": args.threads}
        elif row == "pythae":
            if result:
                continue
            python = args.pythae_python or sys.executable
            if subprocess.run([python, "-c", "import pythae"], capture_output=True).returncode != 0:
                print(f"pythae row skipped: '{python}' cannot import pythae (pass --pythae-python of a venv with pythae 0.1.2)")
                continue
            started = time.perf_counter()
            result = run_pythae(python, out / row, args.epochs, args.threads)
            result.update(wall_s=time.perf_counter() - started, threads=args.threads)
        else:
            config, overrides, evaluations = stages[row]
            if "train_s" not in result:
                started = time.perf_counter()
                result = train_row(config, overrides, out / row)
                result.update(wall_s=time.perf_counter() - started, threads=args.threads)
            for name in evaluations:
                if name in result:
                    continue
                if name == "grey":
                    result[name] = evaluate_row(out / row, "none")
                elif name == "binary":
                    result[name] = evaluate_row(out / row, "dynamic", *iwae)
                else:  # the -ELBO of the images that got the IWAE bound, for a like-for-like gap
                    result[name] = evaluate_row(out / row, "dynamic", max_images=args.iwae_images)
                result_path.parent.mkdir(parents=True, exist_ok=True)
                result_path.write_text(json.dumps(result, indent=2) + "\n")
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
