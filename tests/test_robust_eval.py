"""Negative audio (silent, noise, offscreen): generation, the false-positive rate, tools/eval.py with all five
audio modes, and train.negative_audio_fraction."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from avseg.audio import SAMPLE_RATE, load_log_mel, waveform_to_examples
from avseg.config import load_config
from avseg.data import negative_audio as NA
from avseg.errors import ConfigError, DatasetError
from avseg.evaluation import AudioCounterfactual, AVSBenchEvaluator, avsbench_fscore, avsbench_miou
from avseg.evaluation import robust as R

T, SIZE = 3, 16


# ----------------------------------------------------------------------------- independent references
def loop_fpr(logits):
    """AVSBench-Robust's ``calculate_FPR`` transcribed frame by frame (without its 1e-7): float32
    ``sigmoid > 0.5`` (one channel) or ``argmax != 0`` (classes), counted, divided by H*W; mean over frames."""
    rates = []
    for frame in torch.as_tensor(logits, dtype=torch.float32):  # [C, H, W]
        sounding = torch.sigmoid(frame[0]) > 0.5 if frame.shape[0] == 1 else frame.argmax(dim=0) != 0
        rates.append(int(sounding.sum()) / (frame.shape[1] * frame.shape[2]))
    return sum(rates) / len(rates)


def documented_offscreen_donors(categories, seed):
    """The rule of docs/evaluation.md, written out: groups, then one numpy draw per clip in dataset order."""
    groups = [NA.S4_CATEGORY_GROUPS.get(c, c) for c in categories]
    rng = np.random.default_rng(seed)
    donors = []
    for i in range(len(categories)):
        candidates = [j for j in range(len(categories)) if groups[j] != groups[i]]
        donors.append(candidates[int(rng.integers(len(candidates)))])
    return donors


def documented_noise(seconds, seed, index):
    """Gaussian white noise, RMS 0.1 (-20 dBFS), from default_rng([seed, index]), through the VGGish front end."""
    wave = np.clip(np.random.default_rng([seed, index]).standard_normal(seconds * SAMPLE_RATE) * 0.1, -1, 1)
    return waveform_to_examples(wave, SAMPLE_RATE)[:seconds]


# ----------------------------------------------------------------------------- the metric
def test_fpr_equals_a_straightforward_loop_binary_and_multiclass():
    generator = torch.Generator().manual_seed(0)
    binary = torch.randn(5, 1, 7, 6, generator=generator) * 2
    binary[0] = 0.0  # sigmoid(0) = 0.5 is background (strict >)
    binary[1] = 1e-8  # sigmoid rounds to 0.5 in float32: background too
    fractions = R.sounding_fraction(R.predicted_sounding(binary))
    assert fractions.shape == (5,) and fractions[0] == 0 and fractions[1] == 0
    assert fractions.mean() == pytest.approx(loop_fpr(binary), abs=1e-12)
    semantic = torch.randn(4, 5, 6, 7, generator=generator)
    semantic[0, 0] += 10  # a frame predicted all background
    fractions = R.sounding_fraction(R.predicted_sounding(semantic))
    assert fractions[0] == 0 and fractions.mean() == pytest.approx(loop_fpr(semantic), abs=1e-12)
    with pytest.raises(ValueError, match=r"\[\.\.\., C, H, W\]"):
        R.predicted_sounding(torch.zeros(4, 4))


def test_pn_hmean_definition():
    assert R.pn_hmean(0.6, 0.2) == pytest.approx(2 * 0.6 * 0.8 / (0.6 + 0.8))
    assert R.pn_hmean(0.0, 0.1) == 0.0 and R.pn_hmean(0.7, 1.0) == 0.0
    assert R.pn_hmean(1.0, 0.0) == 1.0


# ----------------------------------------------------------------------------- generation
def test_noise_level_seed_and_front_end(tmp_path):
    import soundfile

    wave = NA.noise_waveform(5 * SAMPLE_RATE, seed=3, index=7)
    assert 20 * math.log10(np.sqrt(np.mean(wave**2))) == pytest.approx(NA.NOISE_DBFS, abs=0.05)
    assert abs(wave.mean()) < 6 * 0.1 / math.sqrt(wave.size)  # zero-mean: within 6 standard errors
    np.testing.assert_array_equal(wave, NA.noise_waveform(5 * SAMPLE_RATE, seed=3, index=7))
    assert not np.array_equal(wave, NA.noise_waveform(5 * SAMPLE_RATE, seed=3, index=8))
    assert not np.array_equal(wave, NA.noise_waveform(5 * SAMPLE_RATE, seed=4, index=7))
    quiet = NA.noise_waveform(SAMPLE_RATE, seed=0, index=0, level_dbfs=-40)
    assert np.sqrt(np.mean(quiet**2)) == pytest.approx(0.01, rel=0.02)
    with pytest.raises(ValueError, match="level_dbfs"):
        NA.noise_waveform(10, 0, 0, level_dbfs=3)

    features = NA.noise_log_mel(5, seed=3, index=7)
    assert features.shape == (5, 1, 96, 64) and features.dtype == torch.float32
    torch.testing.assert_close(features, documented_noise(5, 3, 7), rtol=0, atol=0)
    # The same waveform saved as a file and read back as the dataset reads a positive clip's wav.
    path = tmp_path / "noise.wav"
    soundfile.write(str(path), wave, SAMPLE_RATE, subtype="FLOAT")
    torch.testing.assert_close(load_log_mel(path, num_examples=5), features, rtol=0, atol=1e-4)
    torch.testing.assert_close(NA.silent_log_mel(2), torch.full((2, 1, 96, 64), math.log(0.01)))


def test_offscreen_rule_never_picks_the_same_group_and_is_seeded():
    categories = ["playing_piano", "playing_violin", "male_speech", "dog_barking", "cat", "helicopter", "race_car",
                  "baby_laughter", "disc", "square"]
    partners = NA.offscreen_partners(categories, seed=5)
    groups = [NA.category_group(c) for c in categories]
    assert groups[:8] == ["music", "music", "human", "animal", "animal", "device", "device", "human"]
    assert groups[8:] == ["disc", "square"]  # a category outside the S4 table is its own group
    assert all(groups[int(partners[i])] != groups[i] for i in range(len(categories)))
    assert partners.tolist() == documented_offscreen_donors(categories, 5)
    np.testing.assert_array_equal(partners, NA.offscreen_partners(categories, seed=5))
    assert any(not np.array_equal(partners, NA.offscreen_partners(categories, seed=s)) for s in (6, 7))
    with pytest.raises(DatasetError, match="all 2 clips are in group 'music'"):
        NA.offscreen_partners(["playing_piano", "playing_tabla"], 0)
    with pytest.raises(DatasetError, match="MS3 v1 layout has no category"):
        NA.offscreen_partners(["cat", ""], 0)


# ----------------------------------------------------------------------------- evaluator
class Clips(Dataset):
    """Four 3-frame clips at 16 px in two category groups, all frames annotated but clip 1's last one."""

    def __init__(self):
        generator = torch.Generator().manual_seed(1)
        self.items = []
        for i, category in enumerate(("cat", "playing_piano", "dog_barking", "helicopter")):
            valid = torch.ones(T, dtype=torch.bool)
            valid[-1] = i != 1
            self.items.append({"frames": torch.randn(T, 3, SIZE, SIZE, generator=generator),
                               "log_mel": torch.randn(T, 1, 96, 64, generator=generator),
                               "masks": (torch.rand(T, 1, SIZE, SIZE, generator=generator) < 0.3).float(),
                               "mask_valid": valid, "video_id": f"clip{i}", "category": category})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return dict(self.items[index])


class SoundModel(nn.Module):
    """Logits ``[B, T, 1, H, W]`` that follow the frames and the loudness of the log-mel."""

    batch_keys = ("frames", "log_mel", "masks", "mask_valid")

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, frames, log_mel, masks=None, mask_valid=None):
        sound = log_mel.mean(dim=(2, 3, 4))[..., None, None, None]
        return {"logits": self.scale * frames[:, :, :1] + 0.3 * sound}


@pytest.mark.parametrize("mode", ["silent", "noise", "offscreen"])
def test_evaluator_fpr_and_original_mask_scores_under_negative_audio(mode):
    dataset, model = Clips(), SoundModel()
    negative = AudioCounterfactual(dataset, mode, seed=2)
    donors = documented_offscreen_donors([item["category"] for item in dataset.items], 2)
    logits, masks = [], []
    with torch.no_grad():
        for i, item in enumerate(dataset.items):
            if mode == "silent":
                sound = torch.full((T, 1, 96, 64), math.log(0.01))
            elif mode == "noise":
                sound = documented_noise(T, 2, i)
            else:
                sound = dataset.items[donors[i]]["log_mel"]
            torch.testing.assert_close(negative[i]["log_mel"], sound)
            out = model(item["frames"][None], sound[None])["logits"][0]
            logits.append(out[item["mask_valid"]])
            masks.append(item["masks"][item["mask_valid"], 0])
    logits, masks = torch.cat(logits), torch.cat(masks)
    result = AVSBenchEvaluator(batch_clips=4, progress=False).run(model, DataLoader(negative, batch_size=2), "cpu")
    assert result.audio == mode
    assert result.metrics["fpr"] == pytest.approx(loop_fpr(logits), abs=1e-12)
    assert result.metrics["miou"] == pytest.approx(avsbench_miou(logits[:, 0], masks), abs=1e-6)  # original masks
    assert result.metrics["fscore"] == pytest.approx(avsbench_fscore(logits[:, 0], masks), abs=1e-6)
    assert "fpr" in result.labels()
    normal = AVSBenchEvaluator(progress=False).run(model, DataLoader(dataset, batch_size=2), "cpu")
    assert "fpr" not in normal.metrics
    summary = R.robust_summary([normal, result])
    assert summary["fpr"] == {mode: result.metrics["fpr"]}
    assert summary["pn_hmean"] == pytest.approx(R.pn_hmean(normal.metrics["miou"], result.metrics["fpr"]))


# ----------------------------------------------------------------------------- tools/eval.py, all five modes
def _tiny_checkpoint(root, path):
    from avseg.checkpoint import save_checkpoint
    from avseg.models import build_model

    cfg = load_config(None, [f"data.root={root}", "name=tiny_tpavi", "data.image_size=64", "data.num_workers=0",
                             "model.backbone.name=pvt_v2_b0", "model.backbone.weights=null", "model.audio.name=small",
                             "model.audio.weights=null", "model.neck_channels=16", "eval.num_vis=0", "train.progress=false"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # TPAVI's output projection starts at zero (audio has no effect): wake it up
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.5)
    save_checkpoint(path, model.state_dict(), cfg)
    return cfg, model


def test_eval_cli_with_all_five_audio_modes(synthetic_s4_root, tmp_path, one_torch_thread):
    from avseg.cli.eval import main
    from avseg.data import build_dataset

    ckpt = tmp_path / "run" / "best.pth"
    cfg, model = _tiny_checkpoint(synthetic_s4_root, ckpt)
    modes = ["normal", "silent", "noise", "offscreen", "shuffle"]
    assert main(["--ckpt", str(ckpt), "--split", "test", "--audio", ",".join(modes), "--save-rle", "eval.shuffle_seed=4"]) == 0
    report = json.loads((tmp_path / "run" / "eval_test" / "metrics.json").read_text())
    assert list(report["results"]) == modes

    dataset = build_dataset(cfg, "test")
    items = [dataset[i] for i in range(len(dataset))]
    donors = documented_offscreen_donors([item["category"] for item in items], 4)
    sounds = {"silent": [torch.full_like(item["log_mel"], math.log(0.01)) for item in items],
              "noise": [documented_noise(5, 4, i) for i in range(len(items))],
              "offscreen": [items[d]["log_mel"] for d in donors]}
    for mode, mode_sounds in sounds.items():
        with torch.no_grad():
            logits = torch.cat([model(item["frames"][None], sound[None])["logits"][0] for item, sound in zip(items, mode_sounds)])
        masks = torch.cat([item["masks"][:, 0] for item in items])
        metrics = report["results"][mode]["metrics"]
        assert metrics["fpr"] == pytest.approx(loop_fpr(logits), abs=1e-9), mode
        assert metrics["miou"] == pytest.approx(avsbench_miou(logits[:, 0], masks), abs=1e-6), mode
    assert "fpr" not in report["results"]["normal"]["metrics"] and "fpr" not in report["results"]["shuffle"]["metrics"]
    with torch.no_grad():  # the check above is sensitive: the model's predictions depend on the sound
        normal = torch.cat([model(item["frames"][None], item["log_mel"][None])["logits"][0] for item in items])
    assert {report["results"][mode]["metrics"]["fpr"] for mode in sounds} != {loop_fpr(normal)}
    robust = report["robust"]
    assert robust["negative_modes"] == ["silent", "noise", "offscreen"]
    fpr_negative = np.mean([report["results"][m]["metrics"]["fpr"] for m in robust["negative_modes"]])
    miou = report["results"]["normal"]["metrics"]["miou"]
    assert robust["fpr_negative"] == pytest.approx(fpr_negative)
    assert robust["pn_hmean"] == pytest.approx(2 * miou * (1 - fpr_negative) / (miou + 1 - fpr_negative))

    # Saved predictions of a negative run score to the same numbers, FPR included.
    noise_preds = tmp_path / "run" / "eval_test" / "preds_noise.json"
    assert main(["--preds", str(noise_preds), "--out", str(tmp_path / "scored")]) == 0
    scored = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert scored["results"]["noise"]["metrics"] == report["results"]["noise"]["metrics"]
    with pytest.raises(ConfigError, match="--audio"):
        main(["--ckpt", str(ckpt), "--audio", "normal,loud"])


# ----------------------------------------------------------------------------- train.negative_audio_fraction
def _train_config(root, *extra):
    return load_config("synthetic/s4_tpavi.yaml", [f"data.root={root}", "data.image_size=64", "data.num_workers=0",
                                                   "model.neck_channels=16", "train.progress=false", *extra])


def test_negative_audio_fraction_wrapper(synthetic_s4_root):
    from avseg.data import build_dataset
    from avseg.data.loaders import build_train_loader
    from avseg.engine.distributed import DistContext

    cfg = _train_config(synthetic_s4_root, "train.negative_audio_fraction=0.6", "seed=3")
    base = build_dataset(cfg, "train", train=False)
    loader = build_train_loader(base, cfg, DistContext())
    wrapped = loader.dataset
    assert isinstance(wrapped, NA.NegativeAudioDataset) and len(loader.sampler) == len(wrapped)
    num_negatives = len(wrapped) - len(base)
    assert num_negatives == round(len(base) * 0.6 / 0.4) == 6
    sources = wrapped.sources.tolist()  # a seeded permutation of the clips, repeated
    assert sorted(sources[: len(base)]) == list(range(len(base))) and sources[len(base):] == sources[: num_negatives - len(base)]
    categories = [record.category for record in base.records]
    kinds = []
    for index in range(len(wrapped)):
        item = wrapped[index]
        if index < len(base):
            original = base[index]
            assert wrapped.kind_of(index) == "positive"
            for key in ("frames", "log_mel", "masks", "mask_valid"):
                torch.testing.assert_close(item[key], original[key])
            continue
        j, source = index - len(base), int(wrapped.sources[index - len(base)])
        kind = wrapped.kind_of(index)
        kinds.append(kind)
        original = base[source]
        assert item["video_id"] == original["video_id"] and float(item["masks"].abs().sum()) == 0.0
        torch.testing.assert_close(item["frames"], original["frames"])
        torch.testing.assert_close(item["mask_valid"], original["mask_valid"])
        if kind == "silent":
            torch.testing.assert_close(item["log_mel"], torch.full_like(item["log_mel"], math.log(0.01)))
        elif kind == "noise":
            torch.testing.assert_close(item["log_mel"], documented_noise(5, 3, j), rtol=0, atol=0)
        else:
            donor = documented_offscreen_donors(categories, 3)[source]
            assert NA.category_group(categories[donor]) != NA.category_group(categories[source])
            torch.testing.assert_close(item["log_mel"], base[donor]["log_mel"])
    assert kinds == ["silent", "noise", "offscreen"] * 2
    # Seeded: the same seed gives the same negatives, another seed other ones.
    again = NA.NegativeAudioDataset(base, 0.6, seed=3)
    assert again.sources.tolist() == wrapped.sources.tolist()
    assert any(NA.NegativeAudioDataset(base, 0.6, seed=s).sources.tolist() != wrapped.sources.tolist() for s in (4, 5, 6))
    # fraction 0: the dataset itself.
    assert build_train_loader(base, _train_config(synthetic_s4_root), DistContext()).dataset is base


def test_negative_audio_needs_a_loss_with_gradient_on_empty_masks(synthetic_s4_root, monkeypatch):
    from avseg.data import build_dataset
    from avseg.losses import segmentation

    assert NA.loss_has_gradient_on_empty_masks("bce") and NA.loss_has_gradient_on_empty_masks("structure")
    assert NA.loss_has_gradient_on_empty_masks("bce", num_classes=71)  # the AVSS cross-entropy

    def dice_loss(logits, masks, mask_valid=None):
        probs = torch.sigmoid(logits)
        return 1 - 2 * (probs * masks).sum() / ((probs**2).sum() + (masks**2).sum() + 1e-3)

    monkeypatch.setitem(segmentation.SEGMENTATION_LOSSES, "dice", dice_loss)
    assert not NA.loss_has_gradient_on_empty_masks("dice")
    cfg = _train_config(synthetic_s4_root, "train.negative_audio_fraction=0.25")
    base = build_dataset(cfg, "train", train=False)
    cfg.model.seg_loss = "dice"
    with pytest.raises(ConfigError, match=r"key 'model.seg_loss': 'dice' has no gradient on an empty mask.*negative_audio_fraction=0.25"):
        NA.build_negative_audio(base, cfg)
    cfg.model.seg_loss = "bce"
    cfg.data.name = "fashion_mnist"
    with pytest.raises(ConfigError, match="train.negative_audio_fraction"):
        NA.build_negative_audio(base, cfg)
    with pytest.raises(ConfigError, match=r"key 'train.negative_audio_fraction': 1.0 is out of range"):
        _train_config(synthetic_s4_root, "train.negative_audio_fraction=1.0")


def test_training_with_negative_audio_runs(synthetic_s4_root, tmp_path, one_torch_thread):
    from avseg.engine.trainer import train

    cfg = _train_config(synthetic_s4_root, "train.negative_audio_fraction=0.5", "train.epochs=1", "train.batch_size=4",
                        "train.max_steps_per_epoch=2", "train.val_every=0", "train.tensorboard=false", "data.image_size=32")
    result = train(cfg, out=str(tmp_path / "run"))
    # 4 clips + 4 negatives = 2 batches of 4: the epoch covers every item once.
    assert result.steps == 2 and math.isfinite(result.history[-1]["train_loss"])
    assert load_config(tmp_path / "run" / "config.yaml").train.negative_audio_fraction == 0.5


def test_negative_items_of_a_semantic_dataset_have_all_background_labels():
    dataset = Clips()
    for item in dataset.items:
        item["labels"] = torch.randint(0, 5, (T, SIZE, SIZE))
    wrapped = NA.NegativeAudioDataset(dataset, 0.5, seed=0)
    assert len(wrapped) == 8 and [wrapped.kind_of(i) for i in range(4, 8)] == ["silent", "noise", "offscreen", "silent"]
    for index in range(4, 8):
        item = wrapped[index]
        assert item["labels"].dtype == torch.int64 and not item["labels"].any() and not item["masks"].any()
    torch.testing.assert_close(wrapped[0]["labels"], dataset.items[0]["labels"])
    with pytest.raises(ValueError, match="kinds"):
        NA.NegativeAudioDataset(dataset, 0.5, kinds=("loud",))
