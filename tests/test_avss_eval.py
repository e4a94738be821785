"""AVSS evaluation: AVSSEvaluator against a loop transcription of the official test.py, DDP sums, tools/eval.py."""
import csv
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset

from avseg.data.loaders import ContiguousShardSampler
from avseg.errors import ConfigError
from avseg.evaluation import AVSSEvaluator, build_evaluator, format_table
from local_ports import free_port

NUM_CLASSES = 71
FRAMES = 10  # every AVSS clip is padded to 10 frames
SIZE = 12
NAMES = ["background"] + [f"name_{c}" for c in range(1, NUM_CLASSES)]


# ----------------------------------------------------------------------------- hand-made clips and model
class FakeSemanticClips(Dataset):
    """AVSS-shaped items: v1s-like (5 real frames, test: all annotated), v2-like (10), one unannotated real frame."""

    class_names = NAMES

    def __init__(self, num_clips: int = 5, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for index in range(num_clips):
            real = 10 if index % 2 else 5
            labels = torch.zeros(FRAMES, SIZE, SIZE, dtype=torch.int64)
            labels[:real, 2:8, 3:9] = 1 + index  # one object class per clip
            labels[:real, 8:, :4] = 70  # the last class (dropped by the official noBg numbers)
            mask_valid = torch.arange(FRAMES) < real
            if index == 3:
                mask_valid[1] = False  # a real frame without annotation: its label is the background padding
                labels[1] = 0
            self.items.append({
                "frames": torch.randn(FRAMES, 3, SIZE, SIZE, generator=generator),
                "log_mel": torch.randn(FRAMES, 1, 96, 64, generator=generator),
                "labels": labels,
                "masks": (labels > 0).float()[:, None],
                "frame_valid": torch.arange(FRAMES) < real,
                "mask_valid": mask_valid,
                "video_id": f"clip{index}",
                "category": "v2" if real == 10 else "v1s",
            })

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


class FakeSemanticModel(nn.Module):
    """A 1x1 conv to 71 logits, mostly right on the clip's classes; padded frames output 0 (official model)."""

    batch_keys = ("frames", "log_mel", "frame_valid")

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, NUM_CLASSES, 1)
        torch.nn.init.normal_(self.conv.weight, std=0.5, generator=torch.Generator().manual_seed(1))

    def forward(self, frames, log_mel, frame_valid):
        batch, clip_frames = frames.shape[:2]
        logits = self.conv(frames.flatten(0, 1)).view(batch, clip_frames, NUM_CLASSES, *frames.shape[-2:])
        return {"logits": logits * frame_valid[:, :, None, None, None].float()}


def loop_official(logits, labels):
    """``avss/test.py`` over all frames, as loops in float64: ``logits`` [N, C, H, W], ``labels`` [N, H, W]."""
    predicted = torch.softmax(logits.double(), dim=1).argmax(dim=1)
    iou_sum, f_sum, frames = np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES, dtype=np.int64)
    for n in range(labels.shape[0]):
        for c in range(NUM_CLASSES):
            inter = int(((predicted[n] == c) & (labels[n] == c)).sum())
            pred, lab = int((predicted[n] == c).sum()), int((labels[n] == c).sum())
            union = pred + lab - inter
            iou_sum[c] += inter / (2.220446049250313e-16 + union)
            precision, recall = (inter / pred if pred else math.nan), (inter / lab if lab else math.nan)
            f = 1.3 * precision * recall / (0.3 * precision + recall) if (0.3 * precision + recall) else math.nan
            f_sum[c] += 0.0 if math.isnan(f) else f
            frames[c] += union > 0
    with np.errstate(invalid="ignore"):
        per_iou, per_f = np.nan_to_num(iou_sum / frames), np.nan_to_num(f_sum / frames)
    return {"miou": per_iou.mean(), "fscore": per_f.mean(), "per_iou": per_iou, "per_f": per_f, "frames": frames}


def reference(dataset, model):
    """Official numbers (every frame) and the real-frames numbers (real, annotated frames), by loops."""
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    with torch.no_grad():
        logits = model(batch["frames"], batch["log_mel"], frame_valid=batch["frame_valid"])["logits"].flatten(0, 1)
    labels = batch["labels"].flatten(0, 1)
    scored = (batch["frame_valid"] & batch["mask_valid"]).flatten()
    return loop_official(logits, labels), loop_official(logits[scored], labels[scored]), int(scored.sum())


def assert_matches(result, official, real):
    assert result.metrics["miou"] == pytest.approx(official["miou"], abs=1e-6)
    assert result.metrics["fscore"] == pytest.approx(official["fscore"], abs=1e-6)
    assert result.metrics["miou_real_frames"] == pytest.approx(real["miou"], abs=1e-6)
    assert result.metrics["fscore_real_frames"] == pytest.approx(real["fscore"], abs=1e-6)
    rows = result.per_class()
    np.testing.assert_allclose([r["iou"] for r in rows], official["per_iou"], atol=1e-6)
    np.testing.assert_allclose([r["fscore_real_frames"] for r in rows], real["per_f"], atol=1e-6)
    assert [r["frames_present"] for r in rows] == official["frames"].tolist()
    assert [r["frames_present_real_frames"] for r in rows] == real["frames"].tolist()


# ----------------------------------------------------------------------------- the evaluator
def test_evaluator_equals_the_loop_transcription_for_both_variants(tmp_path):
    torch.manual_seed(0)
    dataset, model = FakeSemanticClips(), FakeSemanticModel()
    official, real, real_frames = reference(dataset, model)
    evaluator = AVSSEvaluator(NUM_CLASSES, out_dir=str(tmp_path), progress=False)
    result = evaluator.run(model, DataLoader(dataset, batch_size=2), "cpu")  # batches of 2 clips: sums are batch-free
    assert_matches(result, official, real)
    assert result.num_frames == 5 * FRAMES and result.num_real_frames == real_frames == 5 * 5 + 2 * 5 - 1
    assert official["frames"][0] > real["frames"][0]  # padded frames add background frames to the official sums
    assert result.metrics["miou"] != pytest.approx(result.metrics["miou_real_frames"], abs=1e-3)

    with open(tmp_path / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == NUM_CLASSES and rows[3]["class_name"] == "name_3" and rows[0]["class_name"] == "background"
    assert [int(r["frames_present"]) for r in rows] == official["frames"].tolist()
    assert float(rows[70]["iou"]) == pytest.approx(official["per_iou"][70], abs=1e-6)
    table = format_table([result])
    assert "mIoU official" in table and "mIoU real frames" in table and "name_70" in table
    assert result.summary()["per_class"][1]["class_name"] == "name_1"


def test_labels_never_reach_the_model_and_bad_inputs_are_named():
    class Strict(FakeSemanticModel):
        def forward(self, frames, log_mel, frame_valid, **unexpected):
            assert not unexpected, f"inference passed {list(unexpected)}"
            return super().forward(frames, log_mel, frame_valid)

    dataset = FakeSemanticClips(num_clips=2)
    AVSSEvaluator(NUM_CLASSES, progress=False).run(Strict(), DataLoader(dataset, batch_size=2), "cpu")
    with pytest.raises(ValueError, match="names 71 classes.*predicts 5"):
        AVSSEvaluator(5, progress=False).run(Strict(), DataLoader(dataset, batch_size=2), "cpu")
    with pytest.raises(ConfigError, match="shuffle"):
        AVSSEvaluator(NUM_CLASSES, progress=False).run(Strict(), DataLoader(dataset, batch_size=2, shuffle=True), "cpu")


def test_config_with_task_avss_builds_the_semantic_evaluator():
    from avseg.config import load_config

    cfg = load_config("avsbench/avss_tpavi_r50.yaml", [])
    evaluator = build_evaluator(cfg)
    assert isinstance(evaluator, AVSSEvaluator) and evaluator.num_classes == 71 and evaluator.primary_metric == "miou"
    with pytest.raises(ConfigError, match="save_masks.*per_class.csv"):
        AVSSEvaluator.from_config(load_config("avsbench/avss_tpavi_r50.yaml", ["eval.save_masks=true"]), out_dir="unused")
    with pytest.raises(ConfigError, match="model.num_classes"):
        build_evaluator(load_config("avsbench/avss_tpavi_r50.yaml", ["model.num_classes=1", "model.seg_loss=bce", "model.avm_weight=0"]))


# ----------------------------------------------------------------------------- DDP: the per-class sums all-reduced

def _dist_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        dataset, model = FakeSemanticClips(), FakeSemanticModel()
        loader = DataLoader(dataset, batch_size=2, sampler=ContiguousShardSampler(len(dataset), 2, world_size, rank))
        result = AVSSEvaluator(NUM_CLASSES, out_dir=os.path.join(out_dir, "ddp"), progress=False).run(model, loader, "cpu")
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump({"metrics": result.metrics, "per_class": result.per_class(), "frames": result.num_frames}, handle)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_evaluation_equals_single_process(tmp_path):
    mp.spawn(_dist_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    dataset, model = FakeSemanticClips(), FakeSemanticModel()
    single = AVSSEvaluator(NUM_CLASSES, progress=False).run(model, DataLoader(dataset, batch_size=2), "cpu")
    for rank in range(2):
        ranked = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert ranked["frames"] == single.num_frames
        for key, value in single.metrics.items():
            assert ranked["metrics"][key] == pytest.approx(value, abs=1e-12), key
        for mine, theirs in zip(ranked["per_class"], single.per_class()):
            assert mine["frames_present"] == theirs["frames_present"]
            assert mine["iou_real_frames"] == pytest.approx(theirs["iou_real_frames"], abs=1e-12)
    assert (tmp_path / "ddp" / "per_class.csv").is_file()


# ----------------------------------------------------------------------------- tools/eval.py on synthetic AVSS
@pytest.mark.slow
def test_eval_cli_on_a_synthetic_avss_release(tmp_path, capsys):
    from avseg.checkpoint import save_checkpoint
    from avseg.cli.eval import main
    from avseg.config import load_config
    from avseg.data import build_dataset
    from avseg.data.semantic_labels import read_class_names
    from avseg.data.synthetic import make_synthetic
    from avseg.models import build_model

    root = make_synthetic(tmp_path / "avss", "avss", size=64, seed=0, split_sizes=(1, 1, 1), write_videos=False)
    overrides = [f"data.root={root}", "data.image_size=64", "data.num_workers=0", "model.backbone.name=pvt_v2_b0",
                 "model.backbone.weights=null", "model.audio.name=small", "model.audio.weights=null", "model.neck_channels=16",
                 "train.progress=false"]
    cfg = load_config("avsbench/avss_tpavi_r50.yaml", overrides)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ckpt = tmp_path / "run" / "best.pth"
    save_checkpoint(ckpt, model.state_dict(), cfg)

    assert main(["--ckpt", str(ckpt), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert "mIoU official" in printed and "mIoU real frames" in printed and "padded frames skipped" in printed
    out = tmp_path / "run" / "eval_test"
    report = json.loads((out / "metrics.json").read_text())["results"]["normal"]
    with open(out / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class_name"] for row in rows] == read_class_names(root / "label2idx.json")

    dataset = build_dataset(cfg, "test", train=False)
    official, real, real_frames = reference(dataset, model)
    assert report["metrics"]["miou"] == pytest.approx(official["miou"], abs=1e-6)
    assert report["metrics"]["fscore_real_frames"] == pytest.approx(real["fscore"], abs=1e-6)
    assert report["frames"] == len(dataset) * FRAMES and report["real_frames"] == real_frames
    assert [int(row["frames_present"]) for row in rows] == official["frames"].tolist()
