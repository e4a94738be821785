"""Demo throughput: output frames per second of ``tools/demo.py`` per model config and device.

Each config is built with RANDOM weights (no pretrained files are read; speed does not depend on the
weights) at its own ``data.image_size`` (the AVSBench configs: 224). A generated test video with sound
(default 10 s, 320x240, 25 fps) is segmented at ``--fps`` output frames per second. Columns:

* ``segment fps``: output frames per second of ``Segmenter.predict_media`` (decoding, resizing, log-mel,
  model), after one warm-up clip;
* ``model frames/s``: frames through the model per second in that step. Each output frame is segmented
  in its own clip of T frames (frames that share a clip at the start and end of a video share one pass),
  so on long videos the model sees about T frames per output frame;
* ``end-to-end fps``: output frames per second of segmentation plus writing the overlay mp4 (decode
  again, overlay, H.264 encode, audio copy), i.e. what ``tools/demo.py`` does after loading the model.

    .venv/bin/python benchmarks/demo_throughput.py [--configs synthetic/s4_ecmvae.yaml ...] [--devices cpu cuda]
        [--seconds 10] [--fps 3] [--threads 2] [--batch-size 4]
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


def random_weight_config(name: str):
    """The config with every pretrained file switched off (random weights)."""
    cfg = load_config(name)
    cfg = copy.deepcopy(cfg)
    OmegaConf.update(cfg, "model.backbone.weights", None)
    OmegaConf.update(cfg, "model.audio.weights", None)
    OmegaConf.update(cfg, "model.audio.pca_weights", None)
    return cfg


def bench(name: str, device: str, video: Path, fps: float, batch_size: int, out_dir: Path) -> dict:
    from avseg.models import build_model

    cfg = random_weight_config(name)
    torch.manual_seed(0)
    segmenter = Segmenter(build_model(cfg), cfg, device=device, batch_size=batch_size)
    media = segmenter.open_video(video)
    chosen = choose_fps(media.info.fps, fps)
    clip = np.zeros((segmenter.clip_seconds, 64, 64, 3), np.uint8)
    segmenter.predict_clip(clip, np.zeros(segmenter.clip_seconds * 16000, np.float32), 16000)  # warm-up
    start = time.perf_counter()
    result = segmenter.predict_media(media, chosen)
    segment_s = time.perf_counter() - start
    start = time.perf_counter()
    write_outputs(media, result, out=str(out_dir / f"{Path(name).stem}_{device}.mp4"))
    write_s = time.perf_counter() - start
    model_frames = result.num_clips * result.clip_seconds
    return {
        "config": name, "backbone": cfg.model.backbone.name, "size": int(cfg.data.image_size), "device": device,
        "frames": len(result), "T": result.clip_seconds, "segment_fps": len(result) / segment_s,
        "model_fps": model_frames / segment_s, "e2e_fps": len(result) / (segment_s + write_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the generated test video")
    parser.add_argument("--fps", type=float, default=3.0, help="output frames per second of the demo")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per forward pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*built without weights.*")  # random weights on purpose
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "bench.mp4", args.seconds)
        for name in args.configs:
            for device in devices:
                rows.append(bench(name, device, video, args.fps, args.batch_size, Path(tmp)))
                row = rows[-1]
                print(f"  {row['config']} on {row['device']}: {row['segment_fps']:.2f} frames/s", flush=True)
    gpu = torch.cuda.get_device_name(0) if "cuda" in devices else "-"
    print(f"\nDemo throughput, random weights; {args.seconds:g} s 320x240 video with sound, output at {args.fps:g} fps; "
          f"torch {torch.__version__}, {args.threads} CPU threads, GPU: {gpu}, batch {args.batch_size} clips")
    print("| config | backbone | size | device | output frames | T | segment fps | model frames/s | end-to-end fps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['backbone']} | {r['size']} | {r['device']} | {r['frames']} | {r['T']} | "
              f"{r['segment_fps']:.2f} | {r['model_fps']:.1f} | {r['e2e_fps']:.2f} |")


if __name__ == "__main__":
    main()
