"""tools/quickstart.py (make demo): the held-out demo video is a test clip with a silent object."""
import importlib.util
import json
from pathlib import Path

from avseg.data.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parent.parent


def load_quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "tools" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_held_out_video_is_a_test_mp4_with_a_silent_object(tmp_path):
    quickstart = load_quickstart()
    root = make_synthetic(tmp_path, "s4", size=32, seed=0, split_sizes=(1, 1, 4))
    video = quickstart.held_out_video(root)
    assert video is not None and video.suffix == ".mp4" and "/test/" in video.as_posix()
    clips = json.loads((root / "Single-source" / "synthetic_meta.json").read_text())["clips"]
    assert len(clips[video.stem]["objects"]) >= 2
    assert quickstart.held_out_video(tmp_path / "missing") is None
