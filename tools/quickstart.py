#!/usr/bin/env python
"""``make demo``: the whole avseg pipeline on a small synthetic S4 set, on CPU, in a few minutes.

Steps (each a command you can run yourself; they are printed as they run):

1. ``tools/make_synthetic.py``: a synthetic AVSBench S4 (official layout, raw mp4s with sound);
2. ``tools/train.py``: train ``configs/synthetic/s4_ecmvae_demo.yaml`` (ECMVAE, small backbone);
3. ``tools/eval.py``: the AVSBench mIoU / F-score table on the test split with the clips' own sound and
   with shuffled sound, ``metrics.json``;
4. ``tools/demo.py``: segment a held-out test mp4: overlay video with its sound, PNG strip.

Everything goes to ``runs/quickstart/`` (``make clean`` removes it). A step whose outputs exist is
skipped, training resumes from ``last.pth``, so an interrupted ``make demo`` continues where it stopped.
A step whose tool or config is not in this checkout is reported as missing; nothing is made up.

    python tools/quickstart.py [--out runs/quickstart] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path("configs/synthetic/s4_ecmvae_demo.yaml")
SPLIT_SIZES = "20,300,30"  # train (first frame annotated), val (all frames: the config trains on them), test
FRAME_SIZE = 128  # pixels of the generated frames and videos; the model sees data.image_size


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    parser.add_argument("--device", default="auto", help="device for training, evaluation and the demo")
    return parser.parse_args(argv)


class Quickstart:
    def __init__(self, args: argparse.Namespace):
        self.out = Path(args.out)
        self.args = args
        self.data = self.out / "data"
        self.train_dir = self.out / "train"
        self.eval_dir = self.out / "eval"
        self.demo_dir = self.out / "demo"
        self.missing: List[str] = []
        self.failed: List[str] = []
        self.timings: List[tuple] = []

    # ------------------------------------------------------------------ plumbing
    def tool(self, name: str) -> Optional[Path]:
        path = ROOT / "tools" / name
        if not path.is_file():
            self.missing.append(f"tools/{name}")
            return None
        return path

    def run(self, title: str, command: List[str]) -> bool:
        shown = " ".join("python" if part == sys.executable else display(part) for part in command)
        print(f"\n$ {shown}", flush=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        started = time.perf_counter()
        status = subprocess.call([str(part) for part in command], cwd=ROOT, env=env)
        elapsed = time.perf_counter() - started
        self.timings.append((title, elapsed))
        if status != 0:
            self.failed.append(f"{title} (exit status {status})")
            print(f"[quickstart] {title} FAILED with exit status {status}", flush=True)
            return False
        print(f"[quickstart] {title}: done in {elapsed:.0f} s", flush=True)
        return True

    @staticmethod
    def header(number: int, title: str) -> None:
        print(f"\n========== [{number}/4] {title}", flush=True)

    # ------------------------------------------------------------------ steps
    def make_data(self) -> bool:
        self.header(1, "synthetic S4 data")
        done = self.data / "Single-source" / "synthetic_meta.json"
        if done.is_file():
            print(f"[quickstart] {self.data} exists: skipped")
            return True
        tool = self.tool("make_synthetic.py")
        if tool is None:
            print("[quickstart] MISSING tools/make_synthetic.py: cannot generate the synthetic set")
            return False
        return self.run("synthetic data", [sys.executable, tool, "--task", "s4", "--out", self.data,
                                           "--split-sizes", SPLIT_SIZES, "--size", FRAME_SIZE, "--seed", 0,
                                           "--no-progress"])

    def train(self, epochs: int) -> Optional[Path]:
        self.header(2, f"train {CONFIG} ({epochs} epochs)")
        last, best = self.train_dir / "last.pth", self.train_dir / "best.pth"
        if last.is_file() and checkpoint_epoch(last) >= epochs:
            print(f"[quickstart] {last} has finished {epochs} epochs: skipped")
            return best if best.is_file() else last
        tool = self.tool("train.py")
        if tool is None:
            print("[quickstart] MISSING tools/train.py: cannot train")
            return None
        ok = self.run("training", [sys.executable, tool, "--cfg", CONFIG, "--out", self.train_dir, "--resume",
                                   f"data.root={self.data}", f"device={self.args.device}"])
        if not ok:
            return None
        return best if best.is_file() else last

    def evaluate(self, checkpoint: Path) -> Optional[Path]:
        self.header(3, "evaluate on the synthetic test split")
        metrics = self.eval_dir / "metrics.json"
        if metrics.is_file() and metrics.stat().st_mtime >= checkpoint.stat().st_mtime:
            print(f"[quickstart] {metrics} is newer than {checkpoint}: skipped")
            return metrics
        tool = self.tool("eval.py")
        if tool is None:
            print("[quickstart] MISSING tools/eval.py: no mIoU / F-score table")
            return None
        # Shuffled audio (each test clip gets another clip's sound) shows how much the model relies on sound.
        ok = self.run("evaluation", [sys.executable, tool, "--ckpt", checkpoint, "--out", self.eval_dir, "--audio", "normal,shuffle",
                                     f"data.root={self.data}", f"device={self.args.device}"])
        if ok and not metrics.is_file():
            self.failed.append(f"evaluation (it did not write {metrics})")
            return None
        return metrics if ok else None

    def demo(self, checkpoint: Path) -> List[Path]:
        self.header(4, "demo on a held-out test video")
        video = held_out_video(self.data)
        if video is None:
            self.failed.append(f"demo (no test mp4 with sound under {self.data})")
            print(f"[quickstart] no raw test video found under {self.data}")
            return []
        overlay = self.demo_dir / f"{video.stem}_avs.mp4"
        strip = self.demo_dir / f"{video.stem}_strip.png"
        outputs = [video, overlay, strip]
        if all(path.is_file() and path.stat().st_mtime >= checkpoint.stat().st_mtime for path in outputs[1:]):
            print(f"[quickstart] {overlay} and {strip} are newer than {checkpoint}: skipped")
            return outputs
        tool = self.tool("demo.py")
        if tool is None:
            return []
        device = [] if self.args.device == "auto" else ["--device", self.args.device]
        ok = self.run("demo", [sys.executable, tool, "--ckpt", checkpoint, "--video", video, "--out", overlay,
                               "--strip", strip, "--quiet", *device])
        return outputs if ok else []

    # ------------------------------------------------------------------ main
    def main(self) -> int:
        started = time.perf_counter()
        print(f"avseg quickstart: outputs in {self.out}/ (rerun to resume; `make clean` removes it)")
        if not (ROOT / CONFIG).is_file():
            self.missing.append(str(CONFIG))
            print(f"[quickstart] MISSING {CONFIG}: the synthetic ECMVAE config is not in this checkout")
            return self.summary(started, None, None, [])
        from avseg.config import load_config

        cfg = load_config(ROOT / CONFIG)
        checkpoint = metrics = None
        demo_outputs: List[Path] = []
        if self.make_data():
            checkpoint = self.train(int(cfg.train.epochs))
        if checkpoint is not None and checkpoint.is_file():
            metrics = self.evaluate(checkpoint)
            demo_outputs = self.demo(checkpoint)
        return self.summary(started, checkpoint, metrics, demo_outputs)

    def summary(self, started: float, checkpoint: Optional[Path], metrics: Optional[Path], demo: List[Path]) -> int:
        print("\n========== quickstart summary")
        for title, seconds in self.timings:
            print(f"  {title:<16} {seconds:7.1f} s")
        print(f"  {'total':<16} {time.perf_counter() - started:7.1f} s (this run; skipped steps cost nothing)")
        print("outputs:")
        if (self.data / "Single-source").is_dir():
            print(f"  synthetic S4 data   {self.data}/Single-source/")
        if checkpoint is not None and checkpoint.is_file():
            print(f"  checkpoint          {checkpoint}")
            print(f"  training log        {self.train_dir}/log.txt, {self.train_dir}/train_log.csv")
        if metrics is not None and metrics.is_file():
            print(f"  metrics             {metrics}")
            print_metrics(metrics)
        if demo:
            print(f"  demo input          {demo[0]}")
            print(f"  overlay video       {demo[1]}")
            print(f"  frames with masks   {demo[2]}")
        for item in self.missing:
            print(f"MISSING: {item} is not in this checkout; its step did not run")
        for item in self.failed:
            print(f"FAILED: {item}")
        if self.missing or self.failed:
            print("the quickstart is INCOMPLETE (see above); rerun `make demo` to resume")
            return 1
        print("done. Segment your own video with:\n"
              f"  python tools/demo.py --ckpt {checkpoint} --video YOUR.mp4 --out YOUR_avs.mp4")
        return 0


def display(part) -> str:
    """A command-line part as a user would type it from the repository root."""
    path = Path(str(part))
    return str(path.relative_to(ROOT)) if path.is_absolute() and ROOT in path.parents else str(part)


def checkpoint_epoch(path: Path) -> int:
    """Epochs finished in a training checkpoint (0 when unreadable)."""
    from avseg.checkpoint import torch_load_safely
    from avseg.errors import AvsegError

    try:
        return int(torch_load_safely(path).get("epoch") or 0)
    except (AvsegError, AttributeError, TypeError, ValueError):
        return 0


def held_out_video(root: Path) -> Optional[Path]:
    """The raw mp4 of the first test clip with a silent object beside the sounding one (else the first)."""
    from avseg.data.avsbench_dataset import v1_clip_record

    meta_path = root / "Single-source" / "synthetic_meta.json"
    if not meta_path.is_file():
        return None
    clips = json.loads(meta_path.read_text(encoding="utf-8"))["clips"]
    tests = sorted(name for name, clip in clips.items() if clip["split"] == "test")
    tests.sort(key=lambda name: len(clips[name]["objects"]) < 2)  # stable: clips with a silent object first
    for name in tests:
        category = next(obj["category"] for obj in clips[name]["objects"] if obj["sounding"])
        video = v1_clip_record(root, "s4", name, "test", category).raw_video
        if video is not None and video.is_file():
            return video
    return None


def print_metrics(path: Path) -> None:
    """The headline numbers tools/eval.py wrote to ``metrics.json``, as they are."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))["results"]
        for audio, result in results.items():
            for key, value in result["metrics"].items():
                label = result.get("labels", {}).get(key, "")
                print(f"    audio={audio:<8} {key:<26} {value:.4f}  {label}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        print(f"    (see {path}; its layout was not recognised: {type(exc).__name__} {exc})")


if __name__ == "__main__":
    sys.exit(Quickstart(parse_args()).main())
