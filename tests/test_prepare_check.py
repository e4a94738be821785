"""tools/prepare_avsbench.py reproduces the generator's files from its raw videos; tools/check_dataset.py finds problems."""
import os
import pickle
import shutil

import numpy as np
import pytest
import soundfile
from PIL import Image

from avseg.cli.check_dataset import main as check_main
from avseg.cli.prepare_avsbench import main as prepare_main
from avseg.data import AVSBenchDataset, read_semantic_index, read_v1_index
from avseg.data.avsbench_dataset import v1_csv_path
from avseg.data.prepare import extract_frames, frame_indices
from avseg.data.safe_pickle import load_tensor_pickle
from avseg.data.synthetic import make_synthetic, write_mp4
from avseg.errors import MediaError


def image(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def test_official_frame_indices():
    assert frame_indices(25.0, 5) == [23, 48, 73, 98, 123]
    assert frame_indices(8.0, 5) == [7, 15, 23, 31, 39]
    # --official-frame-times: int(round(fps)) first, as preprocess_s4.py / preprocess_ms3.py
    assert frame_indices(29.97, 5) == [28, 58, 88, 118, 147]
    assert frame_indices(29.97, 5, official_frame_times=True) == [28, 58, 88, 118, 148]
    assert frame_indices(12.5, 2, official_frame_times=True) == [11, 23]  # Python round: half to even (12)
    assert frame_indices(8.0, 5, official_frame_times=True) == frame_indices(8.0, 5)


def test_short_video_is_an_error_unless_official_frame_times(tmp_path):
    """A 4 s video asked for 5 frames: an error by default; the released scripts' last-frame clamp on request."""
    video = tmp_path / "short.mp4"
    grey = np.repeat(np.arange(32, dtype=np.uint8)[:, None, None, None] * 7, 32, axis=1).repeat(32, axis=2).repeat(3, axis=3)
    write_mp4(video, grey, np.zeros(4 * 16000), fps=8)  # frame i has grey level 7 i
    with pytest.raises(MediaError, match=r"too short: frame indices \[39\].*--official-frame-times"):
        extract_frames(video, 5, size=None)
    frames = extract_frames(video, 5, size=None, official_frame_times=True)
    levels = frames.reshape(5, -1).mean(axis=1) / 7
    np.testing.assert_allclose(levels, [7, 15, 23, 31, 31], atol=0.5)  # index 39 -> the last decoded frame, 31


@pytest.mark.parametrize("task", ["s4", "ms3"])
def test_prepare_reproduces_generator(task, tmp_path, capsys):
    source = make_synthetic(tmp_path / "generated", task, size=64, seed=2, split_sizes=(2, 1, 1))
    target = tmp_path / "prepared"
    originals = read_v1_index(source, task)
    v1_csv_path(target, task).parent.mkdir(parents=True)
    shutil.copy(v1_csv_path(source, task), v1_csv_path(target, task))
    for original, record in zip(originals, read_v1_index(target, task)):  # only the CSV and raw videos
        record.raw_video.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(original.raw_video, record.raw_video)

    assert prepare_main(["--root", str(target), "--task", task, "--size", "64", "--no-progress"]) == 0
    assert "prepared 4 clip(s)" in capsys.readouterr().out
    for original, prepared in zip(originals, read_v1_index(target, task)):
        for a, b in zip(original.frames, prepared.frames):
            assert np.abs(image(a) - image(b)).mean() < 6.0  # H.264 4:2:0 round trip
        generated_wave, rate = soundfile.read(original.wav)
        prepared_wave, prepared_rate = soundfile.read(prepared.wav)
        assert rate == prepared_rate == 16000 and len(prepared_wave) == len(generated_wave)
        generated_mel, prepared_mel = load_tensor_pickle(original.log_mel), load_tensor_pickle(prepared.log_mel)
        assert prepared_mel.shape == (5, 1, 96, 64)
        assert (generated_mel - prepared_mel).abs().mean() < 0.15  # AAC round trip
    other_clip = load_tensor_pickle(originals[1].log_mel)
    assert (generated_mel - other_clip).abs().mean() > 0.5  # the tolerance does separate clips

    assert prepare_main(["--root", str(target), "--task", task, "--no-progress"]) == 0  # resumable
    assert "prepared 0 clip(s), skipped 4 finished" in capsys.readouterr().out
    prepared.raw_video.unlink()
    prepared.wav.unlink()
    assert prepare_main(["--root", str(target), "--task", task, "--no-progress"]) == 1
    assert str(prepared.raw_video) in capsys.readouterr().out


def test_prepare_semantic_layout(tmp_path, capsys):
    source = make_synthetic(tmp_path / "generated", "ms3", size=64, seed=4, layout="semantic", split_sizes=(1, 1, 1))
    target = tmp_path / "prepared"
    target.mkdir()
    shutil.copy(source / "metadata.csv", target / "metadata.csv")
    shutil.copytree(source / "raw_videos", target / "raw_videos")  # our convention: <root>/raw_videos/<uid>.mp4
    for record in read_semantic_index(source):
        shutil.copytree(record.masks[0].parent, target / "v1m" / record.video_id / "labels_rgb")
    assert prepare_main(["--root", str(target), "--task", "avss", "--size", "64", "--no-progress"]) == 0
    item = AVSBenchDataset(target, "ms3", "train", layout="semantic", image_size=64, feature_cache="off")[0]
    assert item["frames"].shape == (5, 3, 64, 64) and item["log_mel"].shape == (5, 1, 96, 64)
    assert check_main(["--root", str(target), "--task", "avss", "--no-progress"]) == 0


def test_check_dataset_reports_problems(synthetic_s4_root, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_s4_root, root)
    assert check_main(["--root", str(root), "--task", "s4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train         4      4" in out and "OK" in out

    records = read_v1_index(root, "s4")
    deleted = records[0].frames[2]
    deleted.unlink()
    corrupt = records[4].masks[3]
    corrupt.write_bytes(corrupt.read_bytes()[:60])
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    records[5].log_mel.write_bytes(pickle.dumps(Exploit()))
    assert check_main(["--root", str(root), "--task", "s4", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s)" in out
    assert f"missing frame: {deleted}" in out
    assert f"{corrupt}: cannot decode mask image" in out
    assert f"{records[5].log_mel}: refused to unpickle" in out and not marker.exists()
    assert check_main(["--root", str(tmp_path / "nowhere"), "--task", "ms3", "--no-progress"]) == 1
    assert "ms3_meta_data.csv" in capsys.readouterr().out
