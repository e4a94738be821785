"""The demo on a folder of videos: summary CSV with per-video errors, resume after a kill, sharding over ranks."""
import csv
import json

import pytest

from avseg.cli.common import run_cli
from avseg.cli.demo import main
from avseg.errors import MediaError
from avseg.inference import batch_demo
from avseg.inference.batch_demo import (
    MARKER,
    PARTIAL,
    SUMMARY,
    BatchRequest,
    list_videos,
    output_names,
    rank_and_world_size,
    run_batch,
    shard,
)
from avseg.inference.segmenter import Segmenter

from test_demo import streams
from test_segmenter import tiny_checkpoint, write_video  # noqa: F401  (a shared fixture)


def exit_status(argv):
    with pytest.raises(SystemExit) as stop:
        run_cli(main, argv)
    return stop.value.code


def read_summary(out):
    with open(out / SUMMARY, newline="") as handle:
        return list(csv.DictReader(handle))


def make_folder(root, names=("a", "b", "c")):
    root.mkdir(parents=True, exist_ok=True)
    return [write_video(root / f"{name}.mp4", 1.0, fps=4) for name in names]


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint):
    return Segmenter.from_checkpoint(tiny_checkpoint, device="cpu")


def test_folder_run_records_each_error_and_goes_on(tmp_path, tiny_checkpoint, capsys):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    write_video(videos / "good.mp4", 2.0, fps=4)
    write_video(videos / "sub" / "silent.mp4", 2.0, fps=4, audio=False)
    (videos / "corrupt.mp4").write_bytes(b"\x00junk" * 40)
    (videos / ".hidden.mp4").write_bytes(b"not read")
    (videos / "notes.txt").write_text("not a video")
    before = sorted(p.relative_to(videos) for p in videos.rglob("*"))
    out = tmp_path / "out"
    argv = ["--ckpt", str(tiny_checkpoint), "--video", str(videos), "--out", str(out), "--overlay", "--quiet"]
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert "2 of 3 videos failed" in err and "corrupt.mp4" in err and "silent.mp4" in err and "Traceback" not in err

    rows = read_summary(out)
    assert [(row["video"], row["status"]) for row in rows] == [
        (str(videos / "corrupt.mp4"), "error"), (str(videos / "good.mp4"), "done"), (str(videos / "sub" / "silent.mp4"), "error")]
    assert "cannot be read as a video" in rows[0]["error"] and "no audio track" in rows[2]["error"]
    assert (rows[1]["frames"], rows[1]["seconds"], rows[1]["output"]) == ("8", "2.000", str(out / "good"))
    assert sorted(p.name for p in (out / "good").iterdir()) == [MARKER, "masks", "overlay.mp4"]
    assert len(list((out / "good" / "masks").glob("*.png"))) == 8 and streams(out / "good" / "overlay.mp4")[0] == 8
    assert sorted(p.name for p in out.iterdir()) == ["good", SUMMARY]  # nothing partial left
    assert sorted(p.relative_to(videos) for p in videos.rglob("*")) == before  # inputs untouched

    # second run: the done video is skipped, the silent one now runs, the corrupt one fails again
    marker_time = (out / "good" / MARKER).stat().st_mtime_ns
    assert exit_status(argv + ["--allow-silent"]) == 2
    assert "1 of 3 videos failed" in capsys.readouterr().err
    assert [row["status"] for row in read_summary(out)] == ["error", "skipped", "done"]
    assert (out / "good" / MARKER).stat().st_mtime_ns == marker_time
    assert json.loads((out / "sub" / "silent" / MARKER).read_text())["audio"] == "none"
    # other settings (a threshold): the done videos are redone, each folder replaced
    assert exit_status(argv + ["--allow-silent", "--threshold", "0.4"]) == 2
    assert [row["status"] for row in read_summary(out)] == ["error", "done", "done"]
    assert (out / "good" / MARKER).stat().st_mtime_ns != marker_time


def test_kill_and_resume(tmp_path, segmenter, tiny_checkpoint, monkeypatch):
    videos = make_folder(tmp_path / "in")
    names, out, request = output_names(videos, tmp_path / "in"), tmp_path / "out", BatchRequest()
    real_write = batch_demo.write_outputs

    def killed_on_b(media, result, **outputs):  # b's masks are written, then the process is killed
        summary = real_write(media, result, **outputs)
        if media.info.path.name == "b.mp4":
            raise KeyboardInterrupt
        return summary

    monkeypatch.setattr(batch_demo, "write_outputs", killed_on_b)
    with pytest.raises(KeyboardInterrupt):
        run_batch(segmenter, videos, names, out, request, tiny_checkpoint, progress=False)
    assert (out / "a" / MARKER).is_file()
    assert not (out / "b").exists() and not (out / "c").exists()
    assert len(list((out / PARTIAL / "new" / "b" / "masks").glob("*.png"))) == 4  # the partial one, not in place
    monkeypatch.setattr(batch_demo, "write_outputs", real_write)

    a_marker = (out / "a" / MARKER).read_bytes(), (out / "a" / MARKER).stat().st_mtime_ns
    rows = run_batch(segmenter, videos, names, out, request, tiny_checkpoint, progress=False)
    assert [row["status"] for row in rows] == ["skipped", "done", "done"]
    assert ((out / "a" / MARKER).read_bytes(), (out / "a" / MARKER).stat().st_mtime_ns) == a_marker
    assert not (out / PARTIAL / "new" / "b").exists()
    for name in names:
        assert len(list((out / name / "masks").glob("*.png"))) == 4

    # other settings (RLE instead of PNGs): every video is redone and its old folder replaced whole
    rows = run_batch(segmenter, videos, names, out, BatchRequest(masks="rle"), tiny_checkpoint, progress=False)
    assert [row["status"] for row in rows] == ["done"] * 3
    assert sorted(p.name for p in (out / "a").iterdir()) == [MARKER, "masks.json"]
    assert len(json.loads((out / "a" / "masks.json").read_text())["frames"]) == 4

    # a deleted output means not done; a folder that is not ours is never replaced
    (out / "b" / "masks.json").unlink()
    (out / "c" / MARKER).unlink()
    rows = run_batch(segmenter, videos, names, out, BatchRequest(masks="rle"), tiny_checkpoint, progress=False)
    assert [row["status"] for row in rows] == ["skipped", "done", "error"]
    assert "is not an avseg demo output" in rows[2]["error"] and (out / "c" / "masks.json").is_file()


def test_ranks_share_the_videos_without_overlap(tmp_path, segmenter, tiny_checkpoint, monkeypatch):
    videos = make_folder(tmp_path / "in", names=("a", "b", "c", "d", "e"))
    names, out = output_names(videos, tmp_path / "in"), tmp_path / "out"
    done_by = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert rank_and_world_size() == (rank, 2)
        rows = run_batch(segmenter, videos, names, out, BatchRequest(), tiny_checkpoint, *rank_and_world_size(), progress=False)
        assert all(row["status"] == "done" for row in rows)
        done_by[rank] = {row["video"] for row in rows}
    assert done_by[0].isdisjoint(done_by[1]) and done_by[0] | done_by[1] == {str(v) for v in videos}
    assert done_by[0] == {str(videos[i]) for i in (0, 2, 4)}
    assert sorted(p.name for p in out.iterdir()) == [PARTIAL, *names]
    for size in (1, 2, 3, 7):  # any world size: disjoint shards covering the list
        parts = [shard(list(range(11)), rank, size) for rank in range(size)]
        assert sorted(i for part in parts for i in part) == list(range(11))
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(MediaError, match="RANK=2 must lie in 0..WORLD_SIZE-1"):
        rank_and_world_size()


def test_list_videos_sorted_hidden_skipped_names_unique(tmp_path):
    root = tmp_path / "v"
    for relative in ["b/x.mp4", "a.mov", "a.mp4", "c.MKV", ".cache/z.mp4", "b/.y.mp4", "b/readme.txt"]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"x")
    videos, found_root = list_videos(root)
    assert [v.relative_to(root).as_posix() for v in videos] == ["a.mov", "a.mp4", "b/x.mp4", "c.MKV"]
    assert output_names(videos, found_root) == ["a_mov", "a_mp4", "b/x", "c"]
    matched, glob_root = list_videos(str(root / "b" / "*.mp4"))
    assert (matched, glob_root) == ([root / "b" / "x.mp4"], root / "b")
    with pytest.raises(MediaError, match="matches no file"):
        list_videos(str(root / "*.avi"))
    assert output_names([root / "a.mp4", root / "a" / "b.mp4"], root) == ["a_mp4", "a/b"]  # no folder inside another
    assert output_names([root / "summary.csv.mp4"], root) == ["summary.csv_mp4"]
    with pytest.raises(MediaError, match="clip_mp4.avi and .*clip.mp4 would both write to the output folder clip_mp4"):
        output_names([root / "clip.mp4", root / "clip.mov", root / "clip_mp4.avi"], root)


def test_folder_mode_refuses_outputs_among_the_inputs(tmp_path, tiny_checkpoint, capsys):
    videos = tmp_path / "videos"
    make_folder(videos, names=("a",))
    before = sorted(p.name for p in videos.iterdir())
    (tmp_path / "file").write_text("x")
    base = ["--ckpt", str(tiny_checkpoint), "--quiet", "--video"]
    for argv, message in [
        (base + [str(videos), "--out", str(videos)], "is the input folder"),
        (base + [str(videos), "--out", str(videos / "out")], "lies inside the input folder"),
        (base + [str(videos / "*.mp4"), "--out", str(videos / "out")], "lies inside the input folder"),
        (base + [str(videos), "--out", str(tmp_path)], "holds the input folder"),
        (base + [str(videos), "--out", str(tmp_path / "file")], "is a file; expected a folder"),
        (base + [str(videos), "--out", str(tmp_path / "file" / "out")], "is a file, not a folder"),
        (base + [str(videos), "--out", str(tmp_path / "o"), "--rle", str(tmp_path / "m.json")], "--rle: for one video only"),
        (base + [str(videos)], "--out OUT_FOLDER is required"),
        (base + [str(videos), "--out", str(tmp_path / "o"), "--class-names", str(tmp_path / "no.json")],
         f"cannot read the class list {tmp_path / 'no.json'}"),
        (base + [str(tmp_path / "none" / "*.mp4"), "--out", str(tmp_path / "o")], "matches no file"),
    ]:
        assert exit_status(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in videos.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "videos"]  # no output folder was made
    single = ["--ckpt", str(tiny_checkpoint), "--video", str(videos / "a.mp4"), "--out", str(tmp_path / "o.mp4")]
    assert exit_status(single + ["--masks", "rle"]) == 2
    assert "--masks and --overlay are for a folder of videos" in capsys.readouterr().err


def test_semantic_model_writes_a_legend_per_video(tmp_path, tiny_checkpoint):
    from avseg.config import load_config
    from avseg.data.semantic_labels import AVSS_PALETTE

    from test_semantic_overlay import SemanticProbe

    videos = make_folder(tmp_path / "in", names=("a", "b"))
    seg = Segmenter(SemanticProbe(), load_config(None, ["data.image_size=32"]), device="cpu")
    names, out = output_names(videos, tmp_path / "in"), tmp_path / "out"
    rows = run_batch(seg, videos, names, out, BatchRequest(masks="rle"), tiny_checkpoint, progress=False)
    assert [row["status"] for row in rows] == ["done", "done"]
    for name in names:
        assert sorted(p.name for p in (out / name).iterdir()) == [MARKER, "legend.json", "legend.png", "masks.json"]
        legend = json.loads((out / name / "legend.json").read_text())
        assert [entry["class"] for entry in legend["classes"]] == [5, 9]
        assert [entry["colour"] for entry in legend["classes"]] == [AVSS_PALETTE[5].tolist(), AVSS_PALETTE[9].tolist()]
        assert json.loads((out / name / MARKER).read_text())["classes"] == legend["classes"]
        frames = json.loads((out / name / "masks.json").read_text())["frames"]
        assert {entry["class"] for frame in frames for entry in frame["classes"]} == {5, 9}
