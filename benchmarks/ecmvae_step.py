"""Training-step time and peak memory of ECMVAE: ours against a straightforward official-style formulation.

One training step = frozen VGGish + ECMVAE forward (prior and posterior paths, every loss term),
backward and an Adam step, for ``--clips`` clip(s) of ``--frames`` frames at ``--size`` px with a
ResNet-50 (random weights: the maths and cost do not depend on them).

Variants, each in its own subprocess so that peak memory is measured cleanly:

* ``ours``: :class:`avseg.models.ecmvae.ECMVAE` as shipped (TPAVI through the spatial-mean identity,
  O(T·H·W) memory);
* ``official``: the same model and weights with the released TPAVI formulation, which builds the
  N×N affinity θᵀφ (N = T·H·W) and applies it to g, as in MMVAE-AVS ``TPAVIModule``. Same maths.

Tasks: ``ms3`` (every frame annotated, AV-map loss on; the posterior path sees all frames, as in the
released model) and ``s4`` (first frame annotated; ours runs the posterior path on it only; the
released code has no S4 path to compare with, so only ``ours`` runs there).

    .venv/bin/python benchmarks/ecmvae_step.py [--size 224] [--frames 5] [--clips 1] [--steps 3]
        [--rounds 2] [--threads 2] [--device cpu|cuda] [--amp] [--tasks ms3,s4] [--variants ours,official]

Each variant runs ``--rounds`` times, alternating, so that a shared machine's changing load hits both
alike; the table shows the median over all timed steps of wall-clock time and of CPU time (user + system
time of the whole process, all threads: on a busy machine it is steadier than wall time). CPU children
get ``OMP_WAIT_POLICY=PASSIVE`` (``--omp-wait-policy``): with the default spinning, threads that wait
for a descheduled peer burn their time slice, which on a shared machine penalises the many small
operations of a step far more than a few large matrix products. Peak memory is the child's peak RSS
(CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch

VARIANTS = ("ours", "official")
TASKS = ("ms3", "s4")


class OfficialStyleTPAVI(torch.nn.Module):
    """The released TPAVI maths with the explicit N×N affinity around an avseg ``TPAVI`` (same weights).

    Alignment (AVSBench) or L2 normalisation (ECMVAE) come from the block's own ``prepare_inputs``;
    then, as in the official ``TPAVIModule``: tiled audio, θᵀφ / N (``[B, N, N]``) applied to g.
    """

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, visual, audio):
        """``visual [B, T, C, H, W]``, ``audio [B, T, A]`` -> (``[B, T, C, H, W]``, ``[B, T, C]``)."""
        block = self.block
        visual, audio = block.prepare_inputs(visual, audio)
        batch, frames, channels, height, width = visual.shape
        visual = visual.permute(0, 2, 1, 3, 4)
        audio_map = audio.permute(0, 2, 1)[..., None, None].repeat(1, 1, 1, height, width)
        inter = block.inter_channels
        g_x = block.g(visual).view(batch, inter, -1).permute(0, 2, 1)
        theta_x = block.theta(visual).view(batch, inter, -1)
        phi_x = block.phi(audio_map).view(batch, inter, -1)
        affinity = torch.matmul(theta_x.permute(0, 2, 1), phi_x)
        affinity = affinity / affinity.size(-1)
        y = torch.matmul(affinity, g_x).permute(0, 2, 1).contiguous().view(batch, inter, frames, height, width)
        z = block.norm_layer((block.W_z(y) + visual).permute(0, 2, 3, 4, 1))
        return z.permute(0, 1, 4, 2, 3), audio


def build(task: str, variant: str, size: int):
    from avseg.audio.vggish import MissingWeightsWarning
    from avseg.config import load_config
    from avseg.models.ecmvae import build_ecmvae

    overrides = [
        "model.name=ecmvae", "model.backbone.name=resnet50", "model.backbone.weights=null",
        "model.audio.name=vggish", "model.audio.weights=null", "model.audio.freeze=true",
        "model.neck_channels=128", "model.seg_loss=structure", f"data.image_size={size}",
        f"model.avm_weight={0.5 if task == 'ms3' else 0.0}",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingWeightsWarning)
        model = build_ecmvae(load_config(None, overrides))
    if variant == "official":
        model.fusion_modules = torch.nn.ModuleList(OfficialStyleTPAVI(block) for block in model.fusion_modules)
    return model


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build(args.task, args.variant, args.size).to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    shape = (args.clips, args.frames)
    batch = dict(
        frames=torch.randn(*shape, 3, args.size, args.size, generator=g),
        log_mel=torch.randn(*shape, 1, 96, 64, generator=g),
        masks=(torch.rand(*shape, 1, args.size, args.size, generator=g) > 0.7).float(),
        mask_valid=torch.ones(*shape, dtype=torch.bool),
    )
    if args.task == "s4":
        batch["mask_valid"][:, 1:] = False
    batch = {k: v.to(device) for k, v in batch.items()}
    amp_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times, losses = [], [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(step())
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dict(task=args.task, variant=args.variant, device=args.device, amp=args.amp,
                step_s=times, cpu_s=cpu_times, peak_mb=peak_mb, first_loss=losses[0])


def run_child(args, task: str, variant: str) -> dict:
    command = [sys.executable, __file__, "--worker", "--task", task, "--variant", variant, "--size", str(args.size),
               "--frames", str(args.frames), "--clips", str(args.clips), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device]
    if args.amp:
        command.append("--amp")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{task}/{variant} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--clips", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each variant (fresh processes)")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY of the children ('' keeps the default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="autocast (bf16 where supported, else fp16); CUDA")
    parser.add_argument("--tasks", default="ms3,s4")
    parser.add_argument("--variants", default="ours,official")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    tasks = [t for t in args.tasks.split(",") if t]
    variants = [v for v in args.variants.split(",") if v]
    runs = [(task, variant) for task in tasks for variant in variants if not (task == "s4" and variant == "official")]
    results = {run: dict(step_s=[], cpu_s=[], peak_mb=[]) for run in runs}  # the release has no S4 path to compare
    for round_index in range(args.rounds):
        for task, variant in runs:
            child = run_child(args, task, variant)
            for key in results[(task, variant)]:
                results[(task, variant)][key] += child[key] if isinstance(child[key], list) else [child[key]]
            print(f"  round {round_index + 1}: {task}/{variant} {statistics.median(child['step_s']):.2f} s wall, "
                  f"{statistics.median(child['cpu_s']):.2f} s CPU, {child['peak_mb']:.0f} MiB", file=sys.stderr, flush=True)
    summary = {run: dict(step_s=statistics.median(r["step_s"]), cpu_s=statistics.median(r["cpu_s"]), peak_mb=max(r["peak_mb"]))
               for run, r in results.items()}
    memory = "peak GPU MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"\nECMVAE training step, ResNet-50, {args.clips} clip(s) x {args.frames} frames at {args.size} px, frozen VGGish, "
          f"device {args.device}{' (AMP)' if args.amp else ''}, {args.threads} threads, median of {args.rounds} x {args.steps} steps")
    print(f"| task | variant | wall s / step | CPU s / step | {memory} | speed-up (wall) | speed-up (CPU) | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for (task, variant), row in summary.items():
        base = summary.get((task, "official"))
        wall = f"{base['step_s'] / row['step_s']:.2f}x" if base else "-"
        cpu = f"{base['cpu_s'] / row['cpu_s']:.2f}x" if base else "-"
        ratio = f"{row['peak_mb'] / base['peak_mb']:.0%}" if base else "-"
        print(f"| {task} | {variant} | {row['step_s']:.2f} | {row['cpu_s']:.2f} | {row['peak_mb']:.0f} | {wall} | {cpu} | {ratio} |")

if __name__ == "__main__":
    main()
