"""Demo throughput: output frames per second of ``tools/demo.py`` per model config and device, before and after
the per-frame feature cache (:mod:`avseg.inference.feature_cache`).

Each config is built with RANDOM weights (no pretrained files are read; speed does not depend on the
weights) at its own ``data.image_size`` (the AVSBench configs: 224; ``--set data.image_size=N`` changes it).
A generated test video with sound (default 10 s, 320x240, 25 fps) is segmented at ``--fps`` output frames
per second by the same model twice. Columns:

* ``whole clips fps``: output frames per second of ``Segmenter.predict_media`` with ``frame_cache=False``
  (decoding, resizing, log-mel, model), after one warm-up clip: each output frame is segmented in its own
  clip of T frames, so the model sees about T frames per output frame;
* ``cached fps``: the same with the feature cache (the default): every needed frame's backbone and neck
  once, one frame's TPAVI and decoder per output; ``speed-up`` is their ratio and the masks agree
  (``max |Δp|``, the largest probability difference);
* ``frames/output``: backbone passes per output frame, without and with the cache;
* ``end-to-end fps``: output frames per second of the cached segmentation plus writing the overlay mp4
  (decode again, overlay, H.264 encode, audio copy), i.e. what ``tools/demo.py`` does after loading the model.

With ``--stream`` the video is also played as a live source in real time (``tools/stream.py --realtime``,
output ``last``): output fps, dropped frames and the latency percentiles from a frame's release to its mask.

    .venv/bin/python benchmarks/demo_throughput.py [--configs synthetic/s4_ecmvae.yaml ...] [--devices cpu cuda]
        [--seconds 10] [--fps 3] [--threads 2] [--batch-size 4] [--set data.image_size=128] [--stream]
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from avseg.inference.outputs import write_outputs
from avseg.config import load_config
from avseg.inference.segmenter import Segmenter
from avseg.inference.stream import file_source, run_stream
from avseg.inference.video import Mp4Writer, choose_fps

DEFAULT_CONFIGS = ("synthetic/s4_ecmvae.yaml", "avsbench/s4_ecmvae_r50.yaml", "avsbench/s4_ecmvae_pvt.yaml")


def make_video(path: Path, seconds: float, width: int = 320, height: int = 240, fps: int = 25) -> Path:
    """Moving coloured discs on a gradient, with a two-tone sound (AAC, 16 kHz)."""
    yy, xx = np.mgrid[0:height, 0:width]
    t = np.arange(int(seconds * 16000)) / 16000
    sound = 0.3 * np.sin(2 * np.pi * 330 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0) + 0.2 * np.sin(2 * np.pi * 880 * t)
    with Mp4Writer(path, fps, width, height, waveform=sound.astype(np.float32), sample_rate=16000) as writer:
        for index in range(int(seconds * fps)):
            image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], -1).astype(np.uint8)
            for cx, colour in ((40 + 5 * index, (250, 40, 40)), (width - 40 - 3 * index, (40, 40, 250))):
                image[(xx - cx % width) ** 2 + (yy - height // 2) ** 2 < 30 ** 2] = colour
            writer.write(image)
    return path


def random_weight_config(name: str, overrides=()):
    """The config with every pretrained file switched off (random weights), plus ``overrides``."""
    cfg = copy.deepcopy(load_config(name, list(overrides)))
    OmegaConf.update(cfg, "model.backbone.weights", None)
    OmegaConf.update(cfg, "model.audio.weights", None)
    OmegaConf.update(cfg, "model.audio.pca_weights", None)
    return cfg


def time_segmenter(segmenter: Segmenter, video: Path, fps: float):
    """(prediction, seconds) of one ``predict_media`` run after a warm-up clip."""
    media = segmenter.open_video(video)
    clip = np.zeros((segmenter.clip_seconds, 64, 64, 3), np.uint8)
    segmenter.predict_clip(clip, np.zeros(segmenter.clip_seconds * 16000, np.float32), 16000)  # warm-up
    start = time.perf_counter()
    result = segmenter.predict_media(media, choose_fps(media.info.fps, fps))
    return media, result, time.perf_counter() - start


def bench(name: str, device: str, video: Path, fps: float, batch_size: int, out_dir: Path, overrides=(),
          stream: bool = False) -> dict:
    from avseg.models import build_model

    cfg = random_weight_config(name, overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    _, whole, whole_s = time_segmenter(Segmenter(model, cfg, device=device, batch_size=batch_size, frame_cache=False),
                                       video, fps)
    media, cached, cached_s = time_segmenter(Segmenter(model, cfg, device=device, batch_size=batch_size), video, fps)
    start = time.perf_counter()
    write_outputs(media, cached, out=str(out_dir / f"{Path(name).stem}_{device}.mp4"))
    write_s = time.perf_counter() - start
    streamed = None
    if stream:
        segmenter = Segmenter(model, cfg, device=device)
        items, _ = file_source(segmenter, video)
        streamed = run_stream(segmenter.stream(), items, realtime=True)
    return {
        "stream": streamed,
        "config": name, "backbone": cfg.model.backbone.name, "size": int(cfg.data.image_size), "device": device,
        "frames": len(cached), "T": cached.clip_seconds, "whole_fps": len(whole) / whole_s,
        "cached_fps": len(cached) / cached_s, "speedup": whole_s / cached_s,
        "max_diff": float(np.abs(whole.probabilities - cached.probabilities).max()),
        "whole_per_output": whole.frames_encoded / len(whole), "cached_per_output": cached.frames_encoded / len(cached),
        "e2e_fps": len(cached) / (cached_s + write_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the generated test video")
    parser.add_argument("--fps", type=float, default=3.0, help="output frames per second of the demo")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per forward pass")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every config")
    parser.add_argument("--stream", action="store_true", help="also play the video as a live source in real time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*built without weights.*")  # random weights on purpose
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "bench.mp4", args.seconds)
        for name in args.configs:
            for device in devices:
                rows.append(bench(name, device, video, args.fps, args.batch_size, Path(tmp), args.set, args.stream))
                row = rows[-1]
                print(f"  {row['config']} on {row['device']}: {row['whole_fps']:.2f} -> {row['cached_fps']:.2f} frames/s",
                      flush=True)
    gpu = torch.cuda.get_device_name(0) if "cuda" in devices else "-"
    print(f"\nDemo throughput, random weights; {args.seconds:g} s 320x240 video with sound, output at {args.fps:g} fps; "
          f"torch {torch.__version__}, {args.threads} CPU threads, GPU: {gpu}, batch {args.batch_size} clips"
          + (f", overrides {' '.join(args.set)}" if args.set else ""))
    print("| config | backbone | size | device | output frames | T | whole clips fps | cached fps | speed-up | "
          "max abs diff | frames/output (whole, cached) | end-to-end fps |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['backbone']} | {r['size']} | {r['device']} | {r['frames']} | {r['T']} | "
              f"{r['whole_fps']:.2f} | {r['cached_fps']:.2f} | {r['speedup']:.1f}x | {r['max_diff']:.1e} | "
              f"{r['whole_per_output']:.2f}, {r['cached_per_output']:.2f} | {r['e2e_fps']:.2f} |")
    if args.stream:
        print("\nLive stream in real time (output last; source 25 fps):")
        print("| config | device | frames pushed | dropped | outputs | output fps | latency p50 / p90 / p99 (s) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            report = r["stream"]
            points = " / ".join(f"{value:.3f}" for value in report.percentiles().values())
            print(f"| {r['config']} | {r['device']} | {report.frames} | {report.dropped} | {report.outputs} | "
                  f"{report.fps:.2f} | {points} |")


if __name__ == "__main__":
    main()
