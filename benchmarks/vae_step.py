"""Where the Fashion-MNIST VAE's CPU training step spends its time: an ablation of avseg's speed settings.

The network and settings of pythae's comparison (docs/vae.md): 2-D latent, summed BCE + KL, Adam 5e-4,
batch 100, 32x32 images. Three settings are switched independently:

* allocator: ``system`` (glibc defaults) or ``tuned`` (``train.cpu_allocator``, the trainer's default on
  CPU); process-wide, so each allocator runs in its own worker process;
* transposed convs: ``plain`` (:class:`torch.nn.ConvTranspose2d`) or ``sum-bias``
  (:class:`avseg.vae.models.SumBiasConvTranspose2d`, the models' default);
* precision: float32 or bfloat16 autocast (``train.amp=bf16``).

Within a worker the four model variants take turns (``--rounds`` rounds of ``--steps`` steps each, the
first round discarded), so a drift of the machine's speed hits them alike. Prints the median ms per
step and the minor page faults per step::

    python benchmarks/vae_step.py [--steps 10] [--rounds 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

ALLOCATORS = ("system", "tuned")


def plain_transposed_convs(model):
    """Replace every SumBiasConvTranspose2d by an nn.ConvTranspose2d with the same weights (in place)."""
    import torch
    from torch import nn

    from avseg.vae.models import SumBiasConvTranspose2d

    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, SumBiasConvTranspose2d):
                plain = nn.ConvTranspose2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                           child.padding, child.output_padding)
                plain.load_state_dict(child.state_dict())
                setattr(module, name, plain.to(memory_format=torch.channels_last))
    return model


def worker(allocator: str, steps: int, rounds: int, threads: int) -> dict:
    import torch

    from avseg.engine.run_setup import tune_cpu_allocator
    from avseg.vae.losses import LossSettings
    from avseg.vae.models import FashionVAE

    tuned = tune_cpu_allocator(allocator, torch.device("cpu"))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images = torch.rand(100, 1, 32, 32)
    variants = {}
    for convs in ("plain", "sum-bias"):
        for precision in ("float32", "bfloat16"):
            model = FashionVAE(loss=LossSettings(loss="elbo", recon="bce", beta=1.0, kl_weight=1.0))
            if convs == "plain":
                plain_transposed_convs(model)
            variants[(convs, precision)] = (model, torch.optim.Adam(model.parameters(), 5e-4))

    def step(model, optimizer, precision):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            loss = model(images)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times = {key: [] for key in variants}
    faults = {key: [] for key in variants}
    for round_index in range(rounds):
        for (convs, precision), (model, optimizer) in variants.items():
            step(model, optimizer, precision)
            before_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = time.perf_counter()
            for _ in range(steps):
                step(model, optimizer, precision)
            if round_index:
                times[(convs, precision)].append(1000 * (time.perf_counter() - started) / steps)
                faults[(convs, precision)].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before_faults) / steps)
    return {
        "allocator": allocator, "applied": tuned,
        "rows": [{"convs": convs, "precision": precision, "ms": statistics.median(times[(convs, precision)]),
                  "faults": statistics.median(faults[(convs, precision)])} for convs, precision in variants],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per turn")
    parser.add_argument("--rounds", type=int, default=8, help="turns per variant (the first is warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=ALLOCATORS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.steps < 1:
        parser.error("--rounds must be at least 2 and --steps at least 1")
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.rounds, args.threads)))
        return 0
    results = []
    for allocator in ALLOCATORS:
        command = [sys.executable, __file__, "--worker", allocator, "--steps", str(args.steps), "--rounds", str(args.rounds), "--threads", str(args.threads)]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode:
            sys.stderr.write(completed.stderr)
            return completed.returncode
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    baseline = next(row["ms"] for row in results[0]["rows"] if row["convs"] == "plain" and row["precision"] == "float32")
    print(f"Fashion-MNIST VAE training step, batch 100, {args.threads} threads, median of {args.rounds - 1} turns of {args.steps} steps")
    print("| allocator | transposed convs | precision | ms / step | speed-up | page faults / step |")
    print("|---|---|---|---|---|---|")
    for result in results:
        allocator = result["allocator"] + ("" if result["applied"] or result["allocator"] == "system" else " (not applied)")
        for row in result["rows"]:
            print(f"| {allocator} | {row['convs']} | {row['precision']} | {row['ms']:.1f} | {baseline / row['ms']:.2f}x | {row['faults']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
