"""ONNX export throughput: frames per second of onnxruntime against eager PyTorch on the CPU.

Each model is built with RANDOM weights (speed does not depend on them) at its own ``data.image_size``,
exported in memory with :func:`avseg.inference.export.onnx_bytes` and run on the same random clips
(``--batch`` clips of ``--frames`` frames). Both runtimes get ``--threads`` threads; one warm-up pass,
then the median of ``--repeats`` passes. ``max |Δ|`` is the largest logit difference between the two.

    .venv/bin/python benchmarks/onnx_throughput.py [--configs tiny avsbench/s4_tpavi_r50.yaml] [--threads 2]
        [--batch 1] [--frames 5] [--repeats 3]

``tiny`` is the tests' TPAVI (ResNet-18, small audio encoder, 16 channels, 64 px).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import torch

from avseg.config import load_config
from avseg.inference.export import LogitsOnly, example_inputs
from avseg.inference.onnx_runtime import OnnxSegmentationModel
from avseg.models import build_model
from demo_throughput import random_weight_config

TINY_OVERRIDES = ["model.name=tpavi", "model.backbone.name=resnet18", "model.backbone.weights=null",
                  "model.audio.name=small", "model.audio.weights=null", "model.audio.freeze=false",
                  "model.neck_channels=16", "data.image_size=64"]
DEFAULT_CONFIGS = ("tiny", "avsbench/s4_tpavi_r50.yaml")


def median_seconds(run: Callable[[], torch.Tensor], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def benchmark(name: str, threads: int, batch: int, frames: int, repeats: int) -> List[str]:
    cfg = load_config(None, TINY_OVERRIDES) if name == "tiny" else random_weight_config(name)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.cfg = cfg
    size = int(cfg.data.image_size)
    started = time.perf_counter()
    runtime = OnnxSegmentationModel.from_torch(model, threads=threads)
    export_seconds = time.perf_counter() - started
    eager = LogitsOnly(model)
    clip_frames, log_mel = example_inputs(size, batch, frames)
    with torch.inference_mode():
        eager_seconds = median_seconds(lambda: eager(clip_frames, log_mel), repeats)
        onnx_seconds = median_seconds(lambda: runtime(frames=clip_frames, log_mel=log_mel)["logits"], repeats)
        difference = float((eager(clip_frames, log_mel) - runtime(frames=clip_frames, log_mel=log_mel)["logits"]).abs().max())
    count = batch * frames
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return [name, f"{cfg.model.name} {cfg.model.backbone.name}", str(size), f"{params:.1f} M", f"{export_seconds:.1f}",
            f"{count / eager_seconds:.1f}", f"{count / onnx_seconds:.1f}", f"{eager_seconds / onnx_seconds:.2f}x",
            f"{difference:.1e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="'tiny' or config names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="clips per pass")
    parser.add_argument("--frames", type=int, default=5, help="frames per clip (T)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = ["config", "model", "px", "params", "export s", "eager frames/s", "onnxruntime frames/s",
              "speed-up", "max |Δ logit|"]
    print(f"CPU, {args.threads} threads, {args.batch} clip(s) x {args.frames} frames per pass, median of {args.repeats}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.configs:
        print("| " + " | ".join(benchmark(name, args.threads, args.batch, args.frames, args.repeats)) + " |", flush=True)


if __name__ == "__main__":
    main()
