"""make demo (avseg.quickstart): the held-out demo video is a test clip with a silent object."""
import json

from avseg.data.synthetic import make_synthetic
from avseg.quickstart import held_out_video


def test_held_out_video_is_a_test_mp4_with_a_silent_object(tmp_path):
    root = make_synthetic(tmp_path, "s4", size=32, seed=0, split_sizes=(1, 1, 4))
    video = held_out_video(root)
    assert video is not None and video.suffix == ".mp4" and "/test/" in video.as_posix()
    clips = json.loads((root / "Single-source" / "synthetic_meta.json").read_text())["clips"]
    assert len(clips[video.stem]["objects"]) >= 2
    assert held_out_video(tmp_path / "missing") is None


def test_quickstart_runs_every_step_through_the_package_and_resumes(tmp_path, monkeypatch, capsys):
    from avseg import quickstart

    monkeypatch.setattr(quickstart, "SPLIT_SIZES", (2, 4, 2))
    monkeypatch.setattr(quickstart, "FRAME_SIZE", 32)
    demo = quickstart.Quickstart(str(tmp_path / "qs"), device="cpu")
    demo.overrides += ["train.epochs=1", "train.max_steps_per_epoch=1", "train.val_every=1", "train.progress=false",
                       "data.image_size=32", "eval.num_vis=0"]
    assert demo.run() == 0, demo.failed
    printed = capsys.readouterr().out
    assert "$ python tools/eval.py --ckpt" in printed and "audio=shuffle" in printed
    assert (demo.eval_dir / "metrics.json").is_file() and len(list(demo.demo_dir.glob("*_avs.mp4"))) == 1
    assert demo.run() == 0 and printed.count("skipped") < capsys.readouterr().out.count("skipped")
