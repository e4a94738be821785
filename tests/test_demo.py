"""The demo command line: overlay mp4 with the original sound, mask PNGs, RLE, strip, bad input."""
import json
import os

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from avseg.audio.vggish_input import SAMPLE_RATE
from avseg.cli.common import run_cli
from avseg.cli.demo import main
from avseg.evaluation.rle import decode_mask
from avseg.inference.video import Mp4Writer

from test_segmenter import tiny_checkpoint, write_video  # noqa: F401  (a shared fixture)


def streams(path):
    """(video frames, video seconds, audio codec, audio sample rate, audio seconds) of a media file."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        pts = sorted(packet.pts for packet in container.demux(video) if packet.size)
        frame_time = float(1 / video.average_rate)
        video_seconds = (pts[-1] - pts[0]) * float(video.time_base) + frame_time
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_info = (audio.codec_context.name, audio.codec_context.sample_rate,
                      float(audio.duration * audio.time_base)) if audio is not None else (None, None, None)
    return (len(pts), video_seconds, *audio_info)


def exit_status(argv):
    with pytest.raises(SystemExit) as stop:
        run_cli(main, argv)
    return stop.value.code


def test_demo_on_mp4_with_sound(tmp_path, tiny_checkpoint, capsys):
    video = write_video(tmp_path / "in.mp4", 3.0, fps=10, size=(96, 64))
    out, masks, rle, strip = tmp_path / "out" / "o.mp4", tmp_path / "masks", tmp_path / "m.json", tmp_path / "s.png"
    status = exit_status(["--ckpt", str(tiny_checkpoint), "--video", str(video), "--out", str(out), "--quiet",
                          "--save-masks", str(masks), "--rle", str(rle), "--strip", str(strip)])
    assert status == 0
    frames_in, seconds_in, codec_in, rate_in, audio_in = streams(video)
    frames_out, seconds_out, codec_out, rate_out, audio_out = streams(out)
    assert frames_out == frames_in == 30
    assert seconds_out == pytest.approx(seconds_in, abs=1e-3)
    assert (codec_out, rate_out) == (codec_in, rate_in) == ("aac", SAMPLE_RATE)  # packets copied
    assert audio_out == pytest.approx(audio_in, abs=0.05)
    with av.open(str(out)) as container:
        assert (container.streams.video[0].codec_context.name, container.streams.video[0].width) == ("h264", 96)

    pngs = sorted(masks.glob("*.png"))
    document = json.loads(rle.read_text())
    assert len(pngs) == len(document["frames"]) == 30
    for png, item in zip(pngs[::7], document["frames"][::7]):
        np.testing.assert_array_equal(np.asarray(Image.open(png)) > 0, decode_mask(item["segmentation"]))
    assert Image.open(strip).size[1] > 64
    printed = capsys.readouterr().out
    assert str(out) in printed and "audio copied" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.mp4"]  # no temporary files left


def test_demo_folder_and_wav(tmp_path, tiny_checkpoint):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(6):  # 6 frames at 2 fps = 3 s
        Image.fromarray(np.full((48, 80, 3), 40 * index, np.uint8)).save(folder / f"frame_{index}.jpg")
    wav = tmp_path / "sound.wav"
    soundfile.write(wav, (0.3 * np.sin(np.arange(3 * 44100) / 7)).astype(np.float32), 44100)
    out = tmp_path / "o.mp4"
    assert exit_status(["--ckpt", str(tiny_checkpoint), "--frames", str(folder), "--audio", str(wav),
                        "--frame-rate", "2", "--out", str(out), "--quiet"]) == 0
    frames, seconds, codec, rate, audio_seconds = streams(out)
    assert (frames, codec, rate) == (6, "aac", 44100)
    assert seconds == pytest.approx(3.0, abs=1e-3) and audio_seconds == pytest.approx(3.0, abs=0.1)


def test_no_audio_is_an_error_unless_allowed(tmp_path, tiny_checkpoint, capsys):
    video = write_video(tmp_path / "silent.mp4", 2.0, fps=4, audio=False)
    out = tmp_path / "o.mp4"
    assert exit_status(["--ckpt", str(tiny_checkpoint), "--video", str(video), "--out", str(out)]) == 2
    assert "no audio track" in capsys.readouterr().err
    assert list(tmp_path.glob("*o.mp4*")) == []
    assert exit_status(["--ckpt", str(tiny_checkpoint), "--video", str(video), "--out", str(out), "--quiet",
                        "--allow-silent"]) == 0
    frames, _, codec, _, _ = streams(out)
    assert frames == 8 and codec is None


@pytest.mark.parametrize("make_input, message", [
    (lambda tmp: tmp / "missing.mp4", "video not found"),
    (lambda tmp: (tmp / "junk.mp4").write_bytes(b"\x00junk" * 40) and tmp / "junk.mp4", "cannot be read as a video"),
    (lambda tmp: write_video(tmp / "short.mp4", 0.6), "at least 0.975 s"),
], ids=["missing", "unreadable", "too-short"])
def test_bad_input_exits_2(tmp_path, tiny_checkpoint, capsys, make_input, message):
    out = tmp_path / "o.mp4"
    argv = ["--ckpt", str(tiny_checkpoint), "--video", str(make_input(tmp_path)), "--out", str(out)]
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_interrupted_output_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with Mp4Writer(tmp_path / "o.mp4", 10, 33, 21, waveform=np.zeros(16000, np.float32)) as writer:
            for _ in range(5):
                writer.write(np.zeros((21, 33, 3), np.uint8))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_outputs_that_are_inputs_are_refused_before_decoding(tmp_path, tiny_checkpoint, capsys):
    video = write_video(tmp_path / "in.mp4", 2.0, fps=4)
    original = video.read_bytes()
    (tmp_path / "link.mp4").symlink_to(video)
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(4):
        Image.fromarray(np.full((48, 64, 3), 50 * index, np.uint8)).save(folder / f"{index:06d}.png")
    frames_before = sorted(p.name for p in folder.iterdir())
    wav = tmp_path / "sound.wav"
    soundfile.write(wav, np.zeros(2 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    base = ["--ckpt", str(tiny_checkpoint), "--quiet"]
    from_video = base + ["--video", str(video)]
    from_frames = base + ["--frames", str(folder), "--audio", str(wav), "--frame-rate", "2"]
    for argv, option in [
        (from_video + ["--out", str(video)], "--out"),
        (from_video + ["--out", str(tmp_path / "link.mp4")], "--out"),  # a symlink to the input
        (from_video + ["--strip", str(video)], "--strip"),
        (from_video + ["--rle", str(video)], "--rle"),
        (from_video + ["--rle", str(tiny_checkpoint)], "--rle"),
        (from_frames + ["--save-masks", str(folder)], "--save-masks"),
        (from_frames + ["--strip", str(folder / "strip.png")], "--strip"),
        (from_frames + ["--out", str(tmp_path / "o.mp4"), "--rle", str(wav)], "--rle"),
    ]:
        assert exit_status(argv) == 2, argv
        err = capsys.readouterr().err
        assert option in err and "Traceback" not in err
    assert video.read_bytes() == original
    assert sorted(p.name for p in folder.iterdir()) == frames_before


def test_check_outputs_not_inputs(tmp_path):
    from avseg.errors import MediaError
    from avseg.inference.outputs import check_outputs_not_inputs

    video, folder = tmp_path / "a.mp4", tmp_path / "frames"
    video.write_bytes(b"x")
    folder.mkdir()
    check_outputs_not_inputs({"--video": video}, files={"--out": tmp_path / "b.mp4"}, folders={"--save-masks": tmp_path / "m"})
    check_outputs_not_inputs({"--frames": folder}, folders={"--save-masks": folder / "masks"})  # a subfolder is not read
    with pytest.raises(MediaError, match="--out .* is the input --video"):
        check_outputs_not_inputs({"--video": video}, files={"--out": tmp_path / "." / "a.mp4"})
    with pytest.raises(MediaError, match="same output path"):
        check_outputs_not_inputs({"--video": video}, files={"--out": tmp_path / "o.png", "--strip": tmp_path / "o.png"})
    with pytest.raises(MediaError, match="--save-masks .* is the input --video"):
        check_outputs_not_inputs({"--video": video}, folders={"--save-masks": video})


def test_an_image_model_checkpoint_is_refused_with_its_kind(tmp_path, capsys):
    from avseg.checkpoint import save_checkpoint
    from avseg.config import load_config
    from avseg.models import build_model

    cfg = load_config(None, ["model.name=fashion_vae", "data.name=fashion_mnist"])
    checkpoint = tmp_path / "vae.pth"
    save_checkpoint(checkpoint, build_model(cfg).state_dict(), cfg)
    video = write_video(tmp_path / "in.mp4", 2.0, fps=4)
    assert exit_status(["--ckpt", str(checkpoint), "--video", str(video), "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert "'fashion_vae' is an image autoencoder/VAE" in err and "Traceback" not in err
    assert not (tmp_path / "o.mp4").exists()


def test_missing_checkpoint_exits_2_naming_it(tmp_path, capsys):
    video = write_video(tmp_path / "in.mp4", 1.0, fps=4)
    missing = tmp_path / "runs" / "best.pth"
    assert exit_status(["--ckpt", str(missing), "--video", str(video), "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    names = tmp_path / "label2idx.json"
    assert exit_status(["--ckpt", str(missing), "--video", str(video), "--legend", str(tmp_path / "l.png"),
                        "--class-names", str(names)]) == 2
    assert f"cannot read the class list {names}" in capsys.readouterr().err  # checked before the checkpoint is loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


@pytest.mark.parametrize("blocked", ["file", pytest.param("read-only", marks=pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders; the probe is exercised by the 'file' case"))])
def test_unwritable_output_folder_exits_2_before_decoding(tmp_path, tiny_checkpoint, capsys, blocked):
    video = write_video(tmp_path / "in.mp4", 1.0, fps=4)
    if blocked == "file":
        (tmp_path / "taken").write_text("a file where the output folder should be")
    else:
        (tmp_path / "taken").mkdir(mode=0o555)
    for option, path in [("--out", "o.mp4"), ("--save-masks", "masks"), ("--rle", "m.json"), ("--strip", "s.png")]:
        argv = ["--ckpt", str(tiny_checkpoint), "--video", str(video), option, str(tmp_path / "taken" / path)]
        assert exit_status(argv) == 2
        err = capsys.readouterr().err
        assert option in err and str(tmp_path / "taken") in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "taken"]


def test_a_failed_write_leaves_no_half_written_output(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    import errno

    from avseg.inference import overlay

    video = write_video(tmp_path / "in.mp4", 2.0, fps=4)
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "keep.txt").write_text("the user's file")
    real_save = overlay.save_png
    calls = []

    def disk_full_on_the_third_png(path, image):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(path, image)

    monkeypatch.setattr(overlay, "save_png", disk_full_on_the_third_png)
    out, rle = tmp_path / "o.mp4", tmp_path / "m.json"
    argv = ["--ckpt", str(tiny_checkpoint), "--video", str(video), "--out", str(out), "--save-masks", str(masks),
            "--rle", str(rle), "--quiet"]
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert f"{masks / '000002.png'}: writing the output failed (No space left on device)" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "masks"]  # no mp4, no JSON, no temporary files
    assert sorted(p.name for p in masks.iterdir()) == ["keep.txt"]  # no PNG of the failed run; the user's file kept
    monkeypatch.setattr(overlay, "save_png", real_save)
    assert exit_status(argv) == 0
    assert len(list(masks.glob("*.png"))) == 8 and (masks / "keep.txt").is_file() and out.is_file() and rle.is_file()


def _unwritable_system_folder():
    """A folder that even root cannot write in (sysfs), or None on systems without one."""
    import tempfile

    folder = "/sys/kernel"
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError:
        return folder if os.path.isdir(folder) else None


@pytest.mark.skipif(_unwritable_system_folder() is None, reason="no folder here that root cannot write in")
def test_read_only_file_system_is_refused_before_decoding(tmp_path, tiny_checkpoint, capsys):
    video = write_video(tmp_path / "in.mp4", 1.0, fps=4)
    target = os.path.join(_unwritable_system_folder(), "o.mp4")
    assert exit_status(["--ckpt", str(tiny_checkpoint), "--video", str(video), "--out", target]) == 2
    err = capsys.readouterr().err
    assert f"--out {target}: cannot write in the folder {os.path.dirname(target)}" in err and "Traceback" not in err
