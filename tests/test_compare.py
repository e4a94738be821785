"""tools/compare.py: two tiny configs trained, evaluated with normal and shuffled audio, and tabulated."""
import csv
import json
import math
import shutil

import pytest
from PIL import Image

from avseg.cli.compare import main
from avseg.evaluation import compare as C
from avseg.errors import CheckpointError, ConfigError

CONFIGS = ["synthetic/s4_visual_only.yaml", "synthetic/s4_tpavi.yaml"]
NAMES = ["s4_visual_only", "s4_tpavi"]


def tiny_overrides(root):
    return [
        f"data.root={root}",
        "data.image_size=32",
        "data.num_workers=0",
        "model.neck_channels=16",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.batch_size=2",
        "train.progress=false",
        "train.tensorboard=false",
        "eval.num_vis=0",
    ]


@pytest.fixture(scope="module")
def compared(synthetic_s4_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    # --jobs 2: each config trains in its own tools/train.py subprocess.
    argv = ["--cfgs", *CONFIGS, *tiny_overrides(synthetic_s4_root), "--train", "--out", str(out), "--fps-batches", "1",
            "--threads", "1", "--jobs", "2"]
    assert main(argv) == 0
    return out, synthetic_s4_root


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_tables_match_the_runs_metrics(compared):
    out, _ = compared
    rows = read_csv(out / C.RESULTS_CSV)
    assert [row["name"] for row in rows] == NAMES
    table = (out / C.RESULTS_MD).read_text(encoding="utf-8")
    for row in rows:
        metrics = json.loads((out / row["name"] / "eval_test" / "metrics.json").read_text())
        assert set(metrics["results"]) == {"normal", "shuffle"}
        for mode in ("normal", "shuffle"):
            for key in C.METRIC_KEYS:  # binary runs have no AVSS real-frames variant: empty cells
                expected = metrics["results"][mode]["metrics"].get(key)
                assert (row[f"{key}_{mode}"] == "") if expected is None else float(row[f"{key}_{mode}"]) == expected
        normal = metrics["results"]["normal"]["metrics"]
        shuffled = metrics["results"]["shuffle"]["metrics"]["miou"]
        line = next(text for text in table.splitlines() if text.startswith(f"| `{row['name']}` |"))
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1:6] == [f"{normal['miou']:.4f}", f"{normal['fscore']:.4f}", f"{normal['miou_batch_independent']:.4f}",
                              f"{normal['fscore_batch_independent']:.4f}", f"{shuffled:.4f}"]
        assert cells[6] == f"{shuffled - normal['miou']:+.4f}"
        assert cells[7] == f"{int(row['params']) / 1e6:.2f}"
        assert float(row["fps"]) > 0 and math.isfinite(float(row["fps"]))
        assert int(row["epochs"]) == 1 and int(row["steps"]) == 2
        summary = json.loads((out / row["name"] / C.RUN_SUMMARY).read_text())
        assert summary["metrics"]["normal"]["miou"] == normal["miou"]
    with Image.open(out / C.RESULTS_PNG) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200


def test_parameters_and_training_time_come_from_the_run(compared):
    out, _ = compared
    from avseg.checkpoint import read_checkpoint
    from avseg.models import load_model

    for row in read_csv(out / C.RESULTS_CSV):
        model = load_model(row["checkpoint"])
        assert int(row["params"]) == sum(p.numel() for p in model.parameters())
        history = read_checkpoint(out / row["name"] / "last.pth")["history"]
        assert float(row["train_wall_s"]) == pytest.approx(sum(r["time_epoch_s"] for r in history))
        with open(out / row["name"] / "train_log.csv", newline="") as handle:
            logged = list(csv.DictReader(handle))
        assert float(row["train_time_s"]) == pytest.approx(sum(float(r["time_train_s"]) for r in logged))


def test_visual_only_scores_do_not_change_with_the_sound(compared):
    out, _ = compared
    visual = {row["name"]: row for row in read_csv(out / C.RESULTS_CSV)}["s4_visual_only"]
    for key in C.METRIC_KEYS:
        assert visual[f"{key}_normal"] == visual[f"{key}_shuffle"]


def test_finished_runs_are_reused_without_training(compared):
    out, root = compared
    last = [out / name / "last.pth" for name in NAMES]
    stamps = [path.stat().st_mtime_ns for path in last]
    before = read_csv(out / C.RESULTS_CSV)
    rows = C.compare(CONFIGS, str(out), tiny_overrides(root), train=False, audio="shuffle,silent", fps_batches=0, threads=1,
                     command="python tools/compare.py (test)")
    assert [path.stat().st_mtime_ns for path in last] == stamps
    assert [row.metrics["normal"]["miou"] for row in rows] == [float(row["miou_normal"]) for row in before]
    table = (out / C.RESULTS_MD).read_text()
    assert "mIoU silent audio" in table and "python tools/compare.py (test)" in table
    assert "miou_silent" in read_csv(out / C.RESULTS_CSV)[0]


def test_a_run_is_extended_to_more_epochs_in_process(compared, tmp_path):
    out, root = compared
    shutil.copytree(out / NAMES[0], tmp_path / NAMES[0])
    rows = C.compare(CONFIGS[:1], str(tmp_path), tiny_overrides(root) + ["train.epochs=2"], train=True, fps_batches=0, threads=1)
    assert (rows[0].epochs, rows[0].steps) == (2, 4)
    with open(tmp_path / NAMES[0] / "train_log.csv", newline="") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2]
    assert float(read_csv(tmp_path / C.RESULTS_CSV)[0]["miou_normal"]) == rows[0].metrics["normal"]["miou"]


def test_user_errors_are_clear(compared, tmp_path):
    out, root = compared
    with pytest.raises(ConfigError, match="no_such_config"):
        C.compare(["synthetic/no_such_config.yaml"], str(tmp_path), tiny_overrides(root))
    with pytest.raises(ConfigError, match="train.lr"):
        C.compare(CONFIGS[:1], str(out), tiny_overrides(root) + ["train.lr=0.123"], fps_batches=0)
    with pytest.raises(ConfigError, match=r"key 'train.epochs': 0 is out of range"):
        C.compare(CONFIGS[:1], str(out), tiny_overrides(root) + ["train.epochs=0"], fps_batches=0)
    with pytest.raises(CheckpointError, match="--train"):
        C.compare(CONFIGS[:1], str(tmp_path / "empty"), tiny_overrides(root), fps_batches=0)
    with pytest.raises(ConfigError, match="both have the name"):
        C.compare([CONFIGS[0], CONFIGS[0]], str(tmp_path), tiny_overrides(root))
    with pytest.raises(ConfigError, match="--audio"):
        C.compare(CONFIGS, str(tmp_path), tiny_overrides(root), audio="normal,loud")


def test_negative_audio_modes_add_fpr_and_pn_hmean(compared):
    out, root = compared
    rows = C.compare(CONFIGS, str(out), tiny_overrides(root), audio="silent,noise,offscreen", fps_batches=0, threads=1)
    table = (out / C.RESULTS_MD).read_text(encoding="utf-8")
    header = next(line for line in table.splitlines() if line.startswith("| config |"))
    assert "| FPR silent |" in header and "| FPR offscreen |" in header and "| pn_hmean |" in header
    for row, csv_row in zip(rows, read_csv(out / C.RESULTS_CSV)):
        report = json.loads((out / row.name / "eval_test" / "metrics.json").read_text())
        fprs = [report["results"][mode]["metrics"]["fpr"] for mode in ("silent", "noise", "offscreen")]
        for mode, fpr in zip(("silent", "noise", "offscreen"), fprs):
            assert float(csv_row[f"fpr_{mode}"]) == fpr == row.metrics[mode]["fpr"]
        miou, specificity = row.metrics["normal"]["miou"], 1 - sum(fprs) / 3
        expected = 2 * miou * specificity / (miou + specificity) if miou > 0 else 0.0
        assert float(csv_row["pn_hmean"]) == pytest.approx(expected) and report["robust"]["pn_hmean"] == row.robust["pn_hmean"]
        line = next(text for text in table.splitlines() if text.startswith(f"| `{row.name}` |"))
        assert f"| {float(csv_row['pn_hmean']):.4f} |" in line
    visual = rows[0]  # s4_visual_only ignores the sound: the same pixels are predicted under every sound
    assert visual.name == "s4_visual_only" and len({visual.metrics[mode]["fpr"] for mode in ("silent", "noise", "offscreen")}) == 1


def test_avss_rows_show_the_real_frames_variant():
    """AVSS results carry miou/fscore and the padded-frames-skipped variant, not the batch-independent one."""
    metrics = {"normal": {"miou": 0.25, "fscore": 0.3, "miou_real_frames": 0.2, "fscore_real_frames": 0.28},
               "shuffle": {"miou": 0.1, "fscore": 0.15, "miou_real_frames": 0.05, "fscore_real_frames": 0.1}}
    row = C.CompareRow(name="avss_tpavi", config="configs/compare/avss_tpavi.yaml", task="avss", split="test",
                       checkpoint="best.pth", epoch=1, epochs=1, steps=2, params=10, trainable_params=10,
                       train_time_s=1.0, train_wall_s=1.0, fps=1.0, fps_device="cpu", metrics=metrics)
    table = C.results_table([row], ["normal", "shuffle"])
    assert "mIoU (real frames)" in table and "batch-indep." not in table
    assert "| `avss_tpavi` | 0.2500 | 0.3000 | 0.2000 | 0.2800 | 0.1000 | -0.1500 |" in table
    lines = C.results_csv([row], ["normal", "shuffle"]).splitlines()
    values = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert values["miou_real_frames_normal"] == "0.2" and values["miou_batch_independent_normal"] == ""
