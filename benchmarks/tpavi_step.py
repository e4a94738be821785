"""Training-step time and peak memory of the AVSBench TPAVI model: our TPAVI vs the official N×N form vs no fusion.

One training step = frozen VGGish forward + model forward (BCE on the first frame, S4 as released) +
backward + Adam step, for ``--clips`` clip(s) of ``--frames`` frames at ``--size`` px, with the AVSBench
ResNet-50 config (``configs/avsbench/s4_tpavi_r50.yaml``: 256-channel neck, TPAVI at all four stages).
Weights are random (the cost does not depend on them), so no pretrained file is needed.

Variants, each in a fresh subprocess so that its peak memory is its own:

* ``ours``: :class:`avseg.models.AVSBenchModel` as shipped (TPAVI via the spatial-mean identity, O(N));
* ``dense``: the same network and weights, TPAVI computed as in the official ``TPAVIModule``: tiled
  audio, the N×N affinity θᵀφ / N (N = T·H·W, 15,680 at stride 4 and 224 px) applied to g;
* ``none``: the same network without fusion (``model.fusion=false``); the frozen VGGish still runs in
  the step, as the official training loop always calls it.

    .venv/bin/python benchmarks/tpavi_step.py [--size 224] [--frames 5] [--clips 1] [--steps 3]
        [--threads N] [--device cpu|cuda] [--amp] [--variants ours,dense,none]

Peak memory: the child's peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA). ``--amp`` uses
float16 autocast with a GradScaler on CUDA and bfloat16 autocast on CPU.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn as nn
from einops import repeat

VARIANTS = ("ours", "dense", "none")
CONFIG = "avsbench/s4_tpavi_r50.yaml"


class DenseTPAVI(nn.Module):
    """The official TPAVI formulation (explicit N×N affinity) around an avseg ``TPAVI`` (same weights)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, visual, audio):
        """``visual [B, T, C, H, W]``, ``audio [B, T, 128]`` -> (``[B, T, C, H, W]``, ``[B, T, C]``)."""
        block = self.block
        batch, frames, channels, height, width = visual.shape
        aligned = block.align_channel(audio)
        x = visual.permute(0, 2, 1, 3, 4).contiguous()  # [B, C, T, H, W], as pre_reshape_for_tpavi
        tiled = repeat(aligned, "b t c -> b c t h w", h=height, w=width)
        inter = block.inter_channels
        g_x = block.g(x).view(batch, inter, -1).permute(0, 2, 1)
        theta_x = block.theta(x).view(batch, inter, -1).permute(0, 2, 1)
        phi_x = block.phi(tiled).view(batch, inter, -1)
        f = torch.matmul(theta_x, phi_x)  # [B, N, N]
        f_div_n = f / f.size(-1)
        y = torch.matmul(f_div_n, g_x).permute(0, 2, 1).contiguous().view(batch, inter, frames, height, width)
        z = (block.W_z(y) + x).permute(0, 2, 3, 4, 1)
        z = block.norm_layer(z).permute(0, 1, 4, 2, 3)  # [B, T, C, H, W]
        return z, aligned


def build(variant: str, device: torch.device):
    from avseg.audio.vggish import MissingWeightsWarning, VGGish
    from avseg.config import load_config
    from avseg.models import build_model

    overrides = ["model.backbone.weights=null", "model.audio.weights=null"]
    if variant == "none":
        overrides.append("model.fusion=false")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingWeightsWarning)
        model = build_model(load_config(CONFIG, overrides))
    if variant == "dense":
        for stage in list(model.tpavi):
            model.tpavi[stage] = DenseTPAVI(model.tpavi[stage])
    extra_vggish = VGGish(freeze=True).to(device) if variant == "none" else None
    return model.to(device).train(), extra_vggish


def child(args) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, extra_vggish = build(args.variant, device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    batch = dict(
        frames=torch.randn(args.clips, args.frames, 3, args.size, args.size, generator=gen),
        log_mel=torch.randn(args.clips, args.frames, 1, 96, 64, generator=gen),
        masks=(torch.rand(args.clips, args.frames, 1, args.size, args.size, generator=gen) > 0.5).float(),
        mask_valid=torch.zeros(args.clips, args.frames, dtype=torch.bool),
    )
    batch["mask_valid"][:, 0] = True
    batch = {k: v.to(device) for k, v in batch.items()}
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            if extra_vggish is not None:
                extra_vggish(batch["log_mel"].flatten(0, 1))
            loss = model(**batch)["loss"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"variant": args.variant, "median_s": statistics.median(times), "min_s": min(times), "times": times, "peak_bytes": peak}))


def parent(args) -> int:
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        print(f"unknown variants {unknown} (expected {VARIANTS})", file=sys.stderr)
        return 2
    results = {}
    for variant in variants:
        command = [sys.executable, __file__, "--child", variant, "--size", str(args.size), "--frames", str(args.frames),
                   "--clips", str(args.clips), "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
        command += ["--amp"] if args.amp else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{variant}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {variant}: steps {', '.join(f'{t:.2f}' for t in results[variant]['times'])} s", file=sys.stderr)
    memory = "peak CUDA memory" if args.device.startswith("cuda") else "peak RSS"
    print(f"\nAVSBench TPAVI model, ResNet-50, {args.clips} clip(s) x {args.frames} frames at {args.size} px, "
          f"device {args.device}, threads {args.threads}, amp {'on' if args.amp else 'off'}, {args.steps} timed steps")
    print(f"| variant | step time, median (s) | min (s) | vs no fusion | {memory} (GB) | vs dense |")
    print("|---|---|---|---|---|---|")
    for variant, result in results.items():
        vs_none = f"{result['median_s'] / results['none']['median_s']:.2f}x" if "none" in results else "-"
        vs_dense = f"{result['peak_bytes'] / results['dense']['peak_bytes']:.0%}" if "dense" in results else "-"
        print(f"| {variant} | {result['median_s']:.2f} | {result['min_s']:.2f} | {vs_none} | {result['peak_bytes'] / 1e9:.2f} | {vs_dense} |")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--clips", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", choices=VARIANTS, dest="variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        child(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
