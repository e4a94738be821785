"""``make demo``: the whole avseg pipeline on a small synthetic S4 set, on CPU, in a few minutes.

Steps (each printed as the command that does the same by hand):

1. a synthetic AVSBench S4 (official layout, raw mp4s with sound): :func:`avseg.data.synthetic.make_synthetic`;
2. train ``synthetic/s4_ecmvae_demo.yaml`` (ECMVAE, small backbone): :func:`avseg.engine.trainer.train`;
3. the AVSBench mIoU / F table on the test split with the clips' own sound and with shuffled sound,
   ``metrics.json``: :mod:`avseg.evaluation.runner`;
4. segment a held-out test mp4: overlay video with its sound and a PNG strip: :class:`avseg.inference.Segmenter`.

Everything goes to ``runs/quickstart/`` by default. A step whose outputs exist is skipped and training
resumes from ``last.pth``, so an interrupted ``make demo`` continues where it stopped. A failing step is
reported with its message and stops the steps that need it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from avseg.errors import AvsegError

CONFIG = "synthetic/s4_ecmvae_demo.yaml"
SPLIT_SIZES = (20, 300, 30)  # train (first frame annotated), val (all frames: the config trains on them), test
FRAME_SIZE = 128  # pixels of the generated frames and videos; the model sees data.image_size


def newer(paths: List[Path], than: Path) -> bool:
    """Every path exists and is at least as new as ``than``."""
    return all(path.is_file() and path.stat().st_mtime >= than.stat().st_mtime for path in paths)


def checkpoint_epoch(path: Path) -> int:
    """Epochs finished in a training checkpoint (0 when unreadable)."""
    from avseg.checkpoint import read_checkpoint

    try:
        return int(read_checkpoint(path).get("epoch") or 0)
    except (AvsegError, AttributeError, TypeError, ValueError):
        return 0


def held_out_video(root: Path) -> Optional[Path]:
    """The raw mp4 of the first test clip with a silent object beside the sounding one (else the first)."""
    from avseg.data.avsbench_dataset import v1_clip_record

    meta_path = Path(root) / "Single-source" / "synthetic_meta.json"
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


def metric_lines(path: Path) -> List[str]:
    """The headline numbers of a ``metrics.json``, as they are."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))["results"]
        return [f"    audio={audio:<8} {key:<26} {value:.4f}  {result.get('labels', {}).get(key, '')}"
                for audio, result in results.items() for key, value in result["metrics"].items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"    (see {path}; its layout was not recognised: {type(exc).__name__} {exc})"]


class Quickstart:
    """The four steps into ``out`` on ``device``; :meth:`run` returns the exit status (0: all done)."""

    def __init__(self, out: str = "runs/quickstart", device: str = "auto"):
        self.out, self.device = Path(out), device
        self.data, self.train_dir = self.out / "data", self.out / "train"
        self.eval_dir, self.demo_dir = self.out / "eval", self.out / "demo"
        self.overrides = [f"data.root={self.data}", f"device={device}"]
        self.failed: List[str] = []
        self.timings: List[Tuple[str, float]] = []

    def step(self, number: int, title: str, command: str, action: Callable[[], object]) -> bool:
        """Print the header and the equivalent command, run ``action``; a user error marks the step failed."""
        print(f"\n========== [{number}/4] {title}\n$ {command}", flush=True)
        started = time.perf_counter()
        try:
            action()
        except AvsegError as exc:
            self.failed.append(f"{title}: {exc}")
            print(f"[quickstart] {title} FAILED: {exc}", flush=True)
            return False
        self.timings.append((title, time.perf_counter() - started))
        print(f"[quickstart] {title}: done in {self.timings[-1][1]:.0f} s", flush=True)
        return True

    def make_data(self) -> bool:
        from avseg.data.synthetic import make_synthetic

        if (self.data / "Single-source" / "synthetic_meta.json").is_file():
            print(f"\n[quickstart] {self.data} exists: skipped")
            return True
        sizes = ",".join(map(str, SPLIT_SIZES))
        command = f"python tools/make_synthetic.py --task s4 --out {self.data} --split-sizes {sizes} --size {FRAME_SIZE} --seed 0"
        return self.step(1, "synthetic S4 data", command, lambda: make_synthetic(
            self.data, "s4", size=FRAME_SIZE, seed=0, split_sizes=SPLIT_SIZES, progress=False))

    def train(self) -> Optional[Path]:
        from avseg.config import load_config
        from avseg.engine.trainer import train

        cfg = load_config(CONFIG, self.overrides)
        last, best = self.train_dir / "last.pth", self.train_dir / "best.pth"
        if last.is_file() and checkpoint_epoch(last) >= cfg.train.epochs:
            print(f"\n[quickstart] {last} has finished {cfg.train.epochs} epochs: skipped")
        else:
            command = f"python tools/train.py --cfg {CONFIG} --out {self.train_dir} --resume {' '.join(self.overrides)}"
            resume = str(last) if last.is_file() else None
            if not self.step(2, f"train {CONFIG} ({cfg.train.epochs} epochs)", command,
                             lambda: train(cfg, out=str(self.train_dir), resume=resume)):
                return None
        return best if best.is_file() else last

    def evaluate(self, checkpoint: Path) -> Optional[Path]:
        from avseg.evaluation.runner import evaluate_source, prepare_config, resolve_source

        metrics = self.eval_dir / "metrics.json"
        if newer([metrics], checkpoint):
            print(f"\n[quickstart] {metrics} is newer than {checkpoint}: skipped")
            return metrics

        def evaluate() -> None:
            # Shuffled audio (each test clip gets another clip's sound) shows how much the model relies on sound.
            source = resolve_source(None, self.overrides, ckpt=str(checkpoint))
            evaluate_source(source, prepare_config(source, None, "normal,shuffle", False, False), str(self.eval_dir))

        command = f"python tools/eval.py --ckpt {checkpoint} --out {self.eval_dir} --audio normal,shuffle {' '.join(self.overrides)}"
        return metrics if self.step(3, "evaluate on the synthetic test split", command, evaluate) else None

    def demo(self, checkpoint: Path) -> List[Path]:
        from avseg.inference.outputs import check_demo_request, write_outputs
        from avseg.inference.segmenter import Segmenter
        from avseg.inference.video import choose_fps

        video = held_out_video(self.data)
        if video is None:
            self.failed.append(f"demo: no test mp4 with sound under {self.data}")
            return []
        overlay, strip = self.demo_dir / f"{video.stem}_avs.mp4", self.demo_dir / f"{video.stem}_strip.png"
        if newer([overlay, strip], checkpoint):
            print(f"\n[quickstart] {overlay} and {strip} are newer than {checkpoint}: skipped")
            return [video, overlay, strip]

        def demo() -> None:
            check_demo_request(checkpoint, video=video, out=overlay, strip=strip)
            segmenter = Segmenter.from_checkpoint(checkpoint, device=None if self.device == "auto" else self.device)
            media = segmenter.open_video(video)
            result = segmenter.predict_media(media, choose_fps(media.info.fps))
            write_outputs(media, result, out=overlay, strip=strip, checkpoint=str(checkpoint))

        device = "" if self.device == "auto" else f" --device {self.device}"
        command = f"python tools/demo.py --ckpt {checkpoint} --video {video} --out {overlay} --strip {strip}{device}"
        return [video, overlay, strip] if self.step(4, "demo on a held-out test video", command, demo) else []

    def run(self) -> int:
        started = time.perf_counter()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo config needs no downloaded weights
        print(f"avseg quickstart: outputs in {self.out}/ (rerun to resume; `make clean` removes it)")
        checkpoint = metrics = None
        demo: List[Path] = []
        if self.make_data():
            checkpoint = self.train()
        if checkpoint is not None and checkpoint.is_file():
            metrics = self.evaluate(checkpoint)
            demo = self.demo(checkpoint)
        print("\n".join(self.summary(started, checkpoint, metrics, demo)))
        return 1 if self.failed else 0

    def summary(self, started: float, checkpoint: Optional[Path], metrics: Optional[Path], demo: List[Path]) -> List[str]:
        lines = ["\n========== quickstart summary"]
        lines += [f"  {title:<40} {seconds:7.1f} s" for title, seconds in self.timings]
        lines += [f"  {'total':<40} {time.perf_counter() - started:7.1f} s (this run; skipped steps cost nothing)", "outputs:"]
        if (self.data / "Single-source").is_dir():
            lines.append(f"  synthetic S4 data   {self.data}/Single-source/")
        if checkpoint is not None and checkpoint.is_file():
            lines += [f"  checkpoint          {checkpoint}",
                      f"  training log        {self.train_dir}/log.txt, {self.train_dir}/train_log.csv"]
        if metrics is not None and metrics.is_file():
            lines += [f"  metrics             {metrics}", *metric_lines(metrics)]
        if demo:
            lines += [f"  demo input          {demo[0]}", f"  overlay video       {demo[1]}", f"  frames with masks   {demo[2]}"]
        lines += [f"FAILED: {item}" for item in self.failed]
        if self.failed:
            return lines + ["the quickstart is INCOMPLETE (see above); rerun `make demo` to resume"]
        return lines + ["done. Segment your own video with:",
                        f"  python tools/demo.py --ckpt {checkpoint} --video YOUR.mp4 --out YOUR_avs.mp4"]
