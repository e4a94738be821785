"""The dataset-level AVSBench evaluator: official batch grouping, mask_valid, exact distributed reduction,
saved predictions (RLE + threshold bins), audio counterfactuals, files, errors."""
import csv
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from avseg.config import load_config
from avseg.data.loaders import ContiguousShardSampler
from avseg.errors import ConfigError, DatasetError
from avseg.evaluation import (
    AudioCounterfactual,
    AVSBenchEvaluator,
    SavedPredictions,
    avsbench_fscore,
    avsbench_miou,
    build_evaluator,
    loader_indices,
    shuffle_partners,
    silent_log_mel,
    write_metrics_json,
)
from avseg.evaluation.rle import sidecar_path
from local_ports import free_port

T, SIZE, CLIPS = 3, 16, 7


class FakeClips(Dataset):
    """Seven 3-frame clips at 16 px: two categories, an empty-GT frame, clips with unannotated frames."""

    def __init__(self, num_clips: int = CLIPS, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(num_clips):
            masks = (torch.rand(T, 1, SIZE, SIZE, generator=generator) < 0.4).float()
            valid = torch.ones(T, dtype=torch.bool)
            if i == 2:
                masks[1] = 0
            if i % 3 == 0:
                valid[1:] = False  # S4-train style: only the first frame annotated
                masks[1:] = 0
            self.items.append(
                {
                    "frames": torch.randn(T, 3, SIZE, SIZE, generator=generator),
                    "log_mel": torch.randn(T, 1, 96, 64, generator=generator),
                    "masks": masks,
                    "mask_valid": valid,
                    "video_id": f"clip{i}",
                    "category": "dog" if i < 4 else "cat",
                }
            )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return dict(self.items[index])


class FakeModel(nn.Module):
    """Logits from the frames and the sound: ``[B, T, 1, H, W]``."""

    batch_keys = ("frames", "log_mel", "masks", "mask_valid")

    def __init__(self):
        super().__init__()
        self.visual = nn.Parameter(torch.tensor(2.0))
        self.audio = nn.Parameter(torch.tensor(3.0))

    def forward(self, frames, log_mel, masks=None, mask_valid=None):
        assert masks is None and mask_valid is None  # evaluation passes no masks
        sound = log_mel.mean(dim=(2, 3, 4))[..., None, None, None]
        return {"logits": self.visual * frames[:, :, :1] + self.audio * sound}


def expected_metrics(dataset, model, batch_clips=4):
    """Official numbers computed by hand: public per-batch metrics over consecutive groups of clips."""
    items = [dataset[i] for i in range(len(dataset))]
    mious, fscores, all_logits, all_masks = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(items), batch_clips):
            group = items[start : start + batch_clips]
            logits, masks = [], []
            for item in group:
                out = model(item["frames"][None], item["log_mel"][None])["logits"][0, :, 0]
                logits.append(out[item["mask_valid"]])
                masks.append(item["masks"][item["mask_valid"], 0])
            logits, masks = torch.cat(logits), torch.cat(masks)
            mious.append(avsbench_miou(logits, masks))
            fscores.append(avsbench_fscore(logits, masks))
            all_logits.append(logits)
            all_masks.append(masks)
    everything = (torch.cat(all_logits), torch.cat(all_masks))
    return {
        "miou": float(np.mean(mious)),
        "fscore": float(np.mean(fscores)),
        "miou_batch_independent": avsbench_miou(*everything),
        "fscore_batch_independent": avsbench_fscore(*everything),
    }


@pytest.fixture
def data_and_model():
    torch.manual_seed(0)
    return FakeClips(), FakeModel()


def _loader(dataset, batch_size=4, **kwargs):
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)


# ----------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("loader_batch", [4, 3, 1])
def test_official_grouping_follows_dataset_order_not_loader_batches(data_and_model, loader_batch):
    dataset, model = data_and_model
    evaluator = AVSBenchEvaluator(batch_clips=4, progress=False)
    metrics = evaluator.evaluate(model, _loader(dataset, loader_batch), "cpu")
    expected = expected_metrics(dataset, model)
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert evaluator.primary_metric == "miou" and evaluator.higher_is_better
    assert model.training  # the evaluator restores the mode it found


def test_clip_without_annotated_frames_keeps_its_batch_position(data_and_model):
    dataset, model = data_and_model
    dataset.items[5]["mask_valid"] = torch.zeros(T, dtype=torch.bool)
    result = AVSBenchEvaluator(batch_clips=2, progress=False).run(model, _loader(dataset), "cpu")
    expected = expected_metrics(dataset, model, batch_clips=2)
    assert result.metrics == pytest.approx(expected, abs=1e-12)
    assert result.per_video()[5]["frames"] == 0 and math.isnan(result.per_video()[5]["miou"])


def test_batch_clips_changes_only_the_official_f(data_and_model):
    dataset, model = data_and_model
    two = AVSBenchEvaluator(batch_clips=2, progress=False).evaluate(model, _loader(dataset), "cpu")
    expected = expected_metrics(dataset, model, batch_clips=2)
    assert two["fscore"] == pytest.approx(expected["fscore"], abs=1e-12)
    four = AVSBenchEvaluator(batch_clips=4, progress=False).evaluate(model, _loader(dataset), "cpu")
    assert two["fscore_batch_independent"] == four["fscore_batch_independent"]
    assert two["miou_batch_independent"] == four["miou_batch_independent"]


def test_per_video_and_per_category(data_and_model, tmp_path):
    dataset, model = data_and_model
    result = AVSBenchEvaluator(batch_clips=4, out_dir=str(tmp_path), progress=False).run(model, _loader(dataset), "cpu")
    rows = result.per_video()
    assert [row["video_id"] for row in rows] == [f"clip{i}" for i in range(CLIPS)]
    assert [row["frames"] for row in rows] == [1, 3, 3, 1, 3, 3, 1]
    item = dataset[1]
    logits = model(item["frames"][None], item["log_mel"][None])["logits"][0, :, 0].detach()
    assert rows[1]["miou"] == pytest.approx(avsbench_miou(logits, item["masks"][:, 0]), abs=1e-12)
    assert rows[1]["fscore"] == pytest.approx(avsbench_fscore(logits, item["masks"][:, 0]), abs=1e-12)
    categories = result.per_category()
    assert set(categories) == {"dog", "cat"} and categories["dog"]["clips"] == 4 and categories["cat"]["frames"] == 7
    with open(tmp_path / "per_video.csv", newline="") as handle:
        assert [row["video_id"] for row in csv.DictReader(handle)] == [f"clip{i}" for i in range(CLIPS)]
    write_metrics_json(tmp_path / "metrics.json", [result], {"split": "test"})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["results"]["normal"]["metrics"]["miou"] == result.metrics["miou"]
    assert saved["results"]["normal"]["labels"]["fscore"] == "official (per batch of 4 clips)"
    assert set(saved["results"]["normal"]["per_category"]) == {"dog", "cat"}


# ----------------------------------------------------------------------------- saved predictions
def test_scoring_saved_rle_equals_scoring_the_model(data_and_model, tmp_path):
    dataset, model = data_and_model
    evaluator = AVSBenchEvaluator(batch_clips=4, out_dir=str(tmp_path), save_rle=True, save_masks=True, num_vis=2, progress=False)
    model_result = evaluator.run(model, _loader(dataset, 3), "cpu")
    preds = SavedPredictions(tmp_path / "preds.json")
    assert len(preds) == CLIPS * T and preds.has_bins
    scored = AVSBenchEvaluator(batch_clips=4, progress=False).score_predictions(preds, dataset)
    assert scored.metrics == model_result.metrics  # bit-identical: same statistics from the same bins

    # The PNG masks and the RLE hold the same 0.5-thresholded prediction.
    from PIL import Image

    item = dataset[5]
    logits = model(item["frames"][None], item["log_mel"][None])["logits"][0, :, 0].detach()
    png = np.array(Image.open(tmp_path / "masks" / "cat" / "clip5" / "clip5_2.png")) > 0
    np.testing.assert_array_equal(png, (torch.sigmoid(logits[2]) > 0.5).numpy())
    np.testing.assert_array_equal(preds.frame("clip5", 2)[0], png)
    assert (tmp_path / "grid.png").stat().st_size > 0

    # Without the sidecar, F is computed on the binary masks and labelled so: compare like with like.
    sidecar_path(tmp_path / "preds.json").unlink()
    payload = json.loads((tmp_path / "preds.json").read_text())
    payload["fbins"] = None
    (tmp_path / "binary.json").write_text(json.dumps(payload))
    binary = AVSBenchEvaluator(batch_clips=4, progress=False).score_predictions(SavedPredictions(tmp_path / "binary.json"), dataset)
    assert "fscore" not in binary.metrics and binary.metrics["miou"] == model_result.metrics["miou"]

    class BinaryModel(FakeModel):
        def forward(self, frames, log_mel, masks=None, mask_valid=None):
            logits = super().forward(frames, log_mel)["logits"]
            return {"logits": torch.where(logits > 0, 100.0, -100.0)}  # probabilities exactly 0 or 1

    binary_model = BinaryModel()
    binary_model.load_state_dict(model.state_dict())
    expected = expected_metrics(dataset, binary_model)
    assert binary.metrics["fscore_binary"] == pytest.approx(expected["fscore"], abs=1e-12)
    assert binary.metrics["fscore_binary_batch_independent"] == pytest.approx(expected["fscore_batch_independent"], abs=1e-12)


def test_saved_predictions_errors(data_and_model, tmp_path):
    dataset, model = data_and_model
    with pytest.raises(DatasetError, match="not found"):
        SavedPredictions(tmp_path / "nope.json")
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="not an avseg predictions file"):
        SavedPredictions(tmp_path / "other.json")
    AVSBenchEvaluator(out_dir=str(tmp_path), save_rle=True, progress=False).run(model, _loader(dataset), "cpu")
    payload = json.loads((tmp_path / "preds.json").read_text())
    payload["annotations"] = [a for a in payload["annotations"] if a["video_id"] != "clip4"]
    payload["fbins"] = None
    (tmp_path / "partial.json").write_text(json.dumps(payload))
    with pytest.raises(DatasetError, match="no prediction for video 'clip4' frame 0"):
        AVSBenchEvaluator(progress=False).score_predictions(SavedPredictions(tmp_path / "partial.json"), dataset)


# ----------------------------------------------------------------------------- audio counterfactuals
def test_shuffle_partners_is_a_fixed_derangement():
    partners = shuffle_partners(9, seed=0)
    assert sorted(partners) == list(range(9)) and all(partners[i] != i for i in range(9))
    np.testing.assert_array_equal(partners, shuffle_partners(9, seed=0))
    assert not np.array_equal(partners, shuffle_partners(9, seed=1))
    with pytest.raises(ConfigError, match="at least 2 clips"):
        shuffle_partners(1, seed=0)


def test_audio_counterfactual_items_and_metrics(data_and_model, tmp_path):
    dataset, model = data_and_model
    shuffled = AudioCounterfactual(dataset, "shuffle", seed=3)
    for i in range(len(dataset)):
        torch.testing.assert_close(shuffled[i]["log_mel"], dataset[int(shuffled.partners[i])]["log_mel"])
        torch.testing.assert_close(shuffled[i]["frames"], dataset[i]["frames"])
    silent = AudioCounterfactual(dataset, "silent")
    torch.testing.assert_close(silent[0]["log_mel"], torch.full((T, 1, 96, 64), math.log(0.01)))
    torch.testing.assert_close(silent_log_mel(2), torch.full((2, 1, 96, 64), math.log(0.01)))
    evaluator = AVSBenchEvaluator(out_dir=str(tmp_path), save_masks=True, progress=False)
    normal = evaluator.run(model, _loader(dataset), "cpu")
    counterfactual = evaluator.run(model, _loader(shuffled), "cpu")
    assert counterfactual.audio == "shuffle" and counterfactual.metrics["miou"] != normal.metrics["miou"]
    assert (tmp_path / "per_video.csv").is_file() and (tmp_path / "per_video_shuffle.csv").is_file()
    assert (tmp_path / "masks_shuffle" / "dog" / "clip0" / "clip0_0.png").is_file()
    write_metrics_json(tmp_path / "metrics.json", [normal, counterfactual], {})
    assert set(json.loads((tmp_path / "metrics.json").read_text())["results"]) == {"normal", "shuffle"}
    with pytest.raises(ConfigError, match="eval.audio"):
        AudioCounterfactual(dataset, "reversed")


# ----------------------------------------------------------------------------- errors and dispatch
def test_shuffled_loader_and_bad_logits_are_refused(data_and_model):
    dataset, model = data_and_model
    with pytest.raises(ConfigError, match="shuffle"):
        AVSBenchEvaluator(progress=False).evaluate(model, DataLoader(dataset, batch_size=2, shuffle=True), "cpu")

    class WrongShape(FakeModel):
        def forward(self, frames, log_mel, masks=None, mask_valid=None):
            return {"logits": super().forward(frames, log_mel)["logits"][..., :-1]}

    with pytest.raises(ValueError, match=r"expected \[B, T, 1, H, W\]"):
        AVSBenchEvaluator(progress=False).evaluate(WrongShape(), _loader(dataset), "cpu")


def test_build_evaluator_dispatch(monkeypatch):
    cfg = load_config(None, ["eval.batch_size=2", "eval.num_vis=0"])
    evaluator = build_evaluator(cfg)
    assert isinstance(evaluator, AVSBenchEvaluator) and evaluator.batch_clips == 2 and evaluator.out_dir is None

    import sys
    import types

    module = types.ModuleType("avseg.vae.evaluation")

    class VaeEvaluator:
        primary_metric, higher_is_better = "loss", False

        def __init__(self, cfg):
            self.cfg = cfg

    module.VaeEvaluator = VaeEvaluator
    monkeypatch.setitem(sys.modules, "avseg.vae.evaluation", module)
    assert isinstance(build_evaluator(load_config(None, ["model.name=fashion_vae"])), VaeEvaluator)


# ----------------------------------------------------------------------------- distributed

def _dist_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        dataset, model = FakeClips(), FakeModel()
        results = {}
        # The trainer's sampler (contiguous whole batches) and torch's padding DistributedSampler.
        contiguous = DataLoader(dataset, batch_size=3, sampler=ContiguousShardSampler(len(dataset), 3, world_size, rank))
        padded = DataLoader(dataset, batch_size=2, sampler=DistributedSampler(dataset, world_size, rank, shuffle=False))
        for name, loader in (("contiguous", contiguous), ("padded", padded)):
            evaluator = AVSBenchEvaluator(batch_clips=4, out_dir=os.path.join(out_dir, name), save_rle=True, num_vis=0, progress=False)
            results[name] = evaluator.evaluate(model, loader, "cpu")
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(results, handle)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_evaluation_equals_single_process(tmp_path, data_and_model):
    mp.spawn(_dist_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    dataset, model = data_and_model
    single_dir = tmp_path / "single"
    single = AVSBenchEvaluator(batch_clips=4, out_dir=str(single_dir), save_rle=True, progress=False).evaluate(model, _loader(dataset), "cpu")
    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert results["contiguous"] == single and results["padded"] == single
    for name in ("contiguous", "padded"):  # rank 0 wrote every clip's predictions, once, in dataset order
        gathered = json.loads((tmp_path / name / "preds.json").read_text())["annotations"]
        assert gathered == json.loads((single_dir / "preds.json").read_text())["annotations"]


def test_loader_indices():
    dataset = FakeClips(num_clips=5)
    assert loader_indices(DataLoader(dataset, batch_size=2)) == [0, 1, 2, 3, 4]
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=False)
    assert loader_indices(DataLoader(dataset, batch_size=2, sampler=sampler)) == [1, 3, 0]


# ----------------------------------------------------------------------------- end to end: tools/eval.py on synthetic S4
def _tiny_tpavi_checkpoint(root, path, **extra_overrides):
    from avseg.checkpoint import save_checkpoint
    from avseg.models import build_model

    overrides = {
        "name": "tiny_tpavi",
        "data.root": str(root),
        "data.image_size": 64,
        "data.num_workers": 0,
        "model.backbone.name": "pvt_v2_b0",
        "model.backbone.weights": None,
        "model.audio.name": "small",
        "model.audio.weights": None,
        "model.neck_channels": 16,
        "eval.num_vis": 2,
        **extra_overrides,
    }
    cfg = load_config(None, [f"{k}={'null' if v is None else v}" for k, v in overrides.items()])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    save_checkpoint(path, model.state_dict(), cfg)
    return cfg, model


def test_eval_cli_end_to_end_on_synthetic_s4(synthetic_s4_root, tmp_path):
    from avseg.cli.eval import main
    from avseg.data import build_dataset
    from avseg.errors import CheckpointError

    ckpt = tmp_path / "run" / "best.pth"
    cfg, model = _tiny_tpavi_checkpoint(synthetic_s4_root, ckpt)
    assert main(["--ckpt", str(ckpt), "--split", "test", "--save-rle", "--save-masks"]) == 0
    out = tmp_path / "run" / "eval_test"
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["results"]) == {"normal"} and report["checkpoint"] == str(ckpt)
    for name in ("per_video.csv", "grid.png", "preds.json", "preds.fbins.npz", "config.yaml"):
        assert (out / name).is_file(), name
    assert len(list((out / "masks").rglob("*.png"))) == report["results"]["normal"]["frames"]  # all test frames annotated

    # The numbers equal the public per-batch metrics on the model's own logits (one batch of <= 4 clips).
    dataset = build_dataset(cfg, "test")
    assert len(dataset) <= 4
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    with torch.no_grad():
        logits = model(batch["frames"], batch["log_mel"])["logits"][:, :, 0][batch["mask_valid"]]
    masks = batch["masks"][:, :, 0][batch["mask_valid"]]
    normal = report["results"]["normal"]["metrics"]
    assert normal["miou"] == pytest.approx(avsbench_miou(logits, masks), abs=1e-6)
    assert normal["fscore"] == pytest.approx(avsbench_fscore(logits, masks), abs=1e-6)

    # Scoring the saved RLE (no model) gives the model's numbers.
    assert main(["--preds", str(out / "preds.json"), "--out", str(tmp_path / "scored")]) == 0
    scored = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert scored["results"]["normal"]["metrics"] == normal

    # Clear errors: a missing checkpoint, a checkpoint of another model, a bad key.
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        main(["--ckpt", str(tmp_path / "missing.pth")])
    with pytest.raises(CheckpointError, match="holds a 'tpavi' model, but .* configures model.name 'ecmvae'"):
        main(["--ckpt", str(ckpt), "--cfg", "configs/avsbench/s4_ecmvae_r50.yaml"])
    with pytest.raises(ConfigError, match="eval.nope"):
        main(["--ckpt", str(ckpt), "eval.nope=1"])
