"""The AVSS task of the semantic-release loader: palette labels, padding to 10 frames, geometry, synthetic AVSS."""
import csv
import json

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from torch.utils.data import DataLoader

from avseg.audio import load_log_mel
from avseg.cli.make_synthetic import main as make_synthetic_main
from avseg.config import load_config
from avseg.data import AVSBenchDataset, build_dataset, clip_frames
from avseg.data.avsbench_dataset import IMAGENET_MEAN, IMAGENET_STD
from avseg.data.check import check_dataset
from avseg.data.semantic_labels import AVSS_PALETTE, classes_to_colours, semantic_palette
from avseg.data.synthetic import CATEGORIES, make_synthetic
from avseg.errors import ConfigError, DatasetError

SUBSET_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}


def class_map(height, width, offset=0):
    """int64 [H, W] using every one of the 71 classes (diagonal stripes)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy + 3 * xx + offset) % 71).astype(np.int64)


def write_clip(root, subset, uid, split, frame_size=(48, 64), seconds=None, labels=None):
    """A clip of the semantic release: JPEG frames [H, W] = frame_size, palette labels, a 440 Hz wav."""
    height, width = frame_size
    clip = root / subset / uid
    (clip / "frames").mkdir(parents=True)
    (clip / "labels_rgb").mkdir()
    rng = np.random.default_rng(len(uid))
    count = SUBSET_FRAMES[subset]
    annotated = 1 if subset == "v1s" and split == "train" else count
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(clip / "frames" / f"{k}.jpg", quality=95)
        if k < annotated:
            classes = class_map(height, width, k) if labels is None else labels
            Image.fromarray(classes_to_colours(classes)).save(clip / "labels_rgb" / f"{k}.png")
    seconds = count if seconds is None else seconds
    t = np.arange(int(seconds * 16000)) / 16000
    soundfile.write(str(clip / "audio.wav"), (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16), 16000)
    return clip


def write_release(root, clips):
    """metadata.csv + label2idx.json for ``clips`` = [(subset, uid, split)]."""
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"])
        for subset, uid, split in clips:
            writer.writerow([uid, uid, 0, 0, "guitar", split, subset])
    names = ["background"] + [f"class_{i}" for i in range(1, 71)]
    (root / "label2idx.json").write_text(json.dumps({name: i + 1 for i, name in enumerate(names)}))


@pytest.fixture
def release(tmp_path):
    clips = [("v1s", "s_train", "train"), ("v1s", "s_test", "test"), ("v1m", "m_train", "train"), ("v2", "v_train", "train"),
             ("v2", "v_test", "test")]
    for subset, uid, split in clips:
        write_clip(tmp_path, subset, uid, split)
    write_release(tmp_path, clips)
    return tmp_path


def avss(root, split, size=48, **kwargs):
    return AVSBenchDataset(root, "avss", split, layout="semantic", image_size=size, feature_cache="off", **kwargs)


def by_id(dataset, video_id):
    return next(dataset[i] for i, record in enumerate(dataset.records) if record.video_id == video_id)


def official_labels(path, size, crop):
    """The release's order: resize the colour image (NEAREST), then argmax of exact palette matches."""
    image = Image.open(path).convert("RGB")
    image = official_geometry(image, size, crop, Image.NEAREST)
    rgb = np.asarray(image).astype(np.int32)
    matches = np.stack([np.all(rgb == colour, axis=-1) for colour in semantic_palette(71)], axis=-1).astype(np.float32)
    return np.argmax(matches, axis=-1)


def official_geometry(image, size, crop, resample):
    """Transcription of ``crop_resize_img`` / ``resize_img`` of ``avss/color_dataloader.py``."""
    if not crop:
        return image.resize((size, size), resample)
    w, h = image.size
    if w > h:
        oh = size
        ow = int(1.0 * w * oh / h)
    else:
        ow = size
        oh = int(1.0 * h * ow / w)
    image = image.resize((ow, oh), resample)
    w, h = image.size
    x1 = int(round((w - size) / 2.))
    y1 = int(round((h - size) / 2.))
    return image.crop((x1, y1, x1 + size, y1 + size))


def official_frame(path, size, crop):
    image = official_geometry(Image.open(path).convert("RGB"), size, crop, Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    return (pixels - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def test_palette_labels_round_trip_through_the_loader(release):
    dataset = avss(release, "test", size=(48, 64))  # stored size: no resampling, every pixel must come back
    item = by_id(dataset, "v_test")
    for k in range(10):
        assert torch.equal(item["labels"][k], torch.from_numpy(class_map(48, 64, k)))
    assert item["labels"].dtype == torch.int64 and set(item["labels"].unique().tolist()) == set(range(71))
    assert torch.equal(item["masks"][:, 0], (item["labels"] > 0).float())
    assert dataset.num_classes == 71 and dataset.class_names[0] == "background" and dataset.class_names[70] == "class_70"
    assert np.array_equal(AVSS_PALETTE[item["labels"][0].numpy()], np.asarray(Image.open(dataset.records[1].masks[0]).convert("RGB")))


def test_v1s_clip_padded_to_10_frames(release):
    train_set = avss(release, "train")
    train = by_id(train_set, "s_train")
    assert torch.equal(train_set.load_log_mel([r.video_id for r in train_set.records].index("s_train")), train["log_mel"])
    assert train["frames"].shape == (10, 3, 48, 48) and train["log_mel"].shape == (10, 1, 96, 64)
    assert train["labels"].shape == (10, 48, 48) and train["masks"].shape == (10, 1, 48, 48)
    assert train["frame_valid"].dtype == torch.bool and train["mask_valid"].dtype == torch.bool
    assert train["frame_valid"].tolist() == [True] * 5 + [False] * 5
    assert train["mask_valid"].tolist() == [True] + [False] * 9  # v1s train: only frame 0 annotated
    assert train["subset"] == "v1s" and train["category"] == "guitar"
    assert (train["frames"][5:] == 0).all() and (train["frames"][:5].flatten(1).abs().sum(1) > 0).all()  # zero after Normalize
    assert (train["labels"][1:] == 0).all() and (train["labels"][0] > 0).any()
    examples = load_log_mel(release / "v1s" / "s_train" / "audio.wav")  # 5 s → 5 examples, then 5 zero examples
    assert examples.shape[0] == 5
    assert torch.equal(train["log_mel"][:5], examples) and (train["log_mel"][5:] == 0).all()

    test = by_id(avss(release, "test"), "s_test")
    assert test["frame_valid"].tolist() == [True] * 5 + [False] * 5
    assert test["mask_valid"].tolist() == [True] * 5 + [False] * 5  # all 5 test frames have ground truth
    assert (test["labels"][:5].flatten(1) > 0).any(1).all() and (test["labels"][5:] == 0).all()
    assert clip_frames("semantic", "avss") == 10 and clip_frames("semantic", "v1s") == 5 and clip_frames("v1", "s4") == 5


def test_v2_clip_and_audio_longer_or_shorter_than_10_examples(tmp_path):
    clips = [("v2", "long", "val"), ("v2", "short", "val"), ("v1m", "multi", "val")]
    write_clip(tmp_path, "v2", "long", "val", seconds=10.58)  # 11 VGGish examples: the first 10 are kept
    write_clip(tmp_path, "v2", "short", "val", seconds=9.6)  # 9 examples, then one zero example
    write_clip(tmp_path, "v1m", "multi", "val")
    write_release(tmp_path, clips)
    dataset = avss(tmp_path, "val")
    long, short, multi = (by_id(dataset, uid) for uid in ("long", "short", "multi"))
    assert long["frame_valid"].all() and long["mask_valid"].all() and long["subset"] == "v2"
    assert (long["frames"].flatten(1).abs().sum(1) > 0).all() and (long["labels"].flatten(1) > 0).any(1).all()
    examples = load_log_mel(tmp_path / "v2" / "long" / "audio.wav")
    assert examples.shape[0] == 11 and torch.equal(long["log_mel"], examples[:10])
    examples = load_log_mel(tmp_path / "v2" / "short" / "audio.wav")
    assert examples.shape[0] == 9 and torch.equal(short["log_mel"][:9], examples) and (short["log_mel"][9] == 0).all()
    assert multi["mask_valid"].tolist() == [True] * 5 + [False] * 5 == multi["frame_valid"].tolist()
    only_v2 = avss(tmp_path, "val", subsets=["v2"])
    assert [record.video_id for record in only_v2.records] == ["long", "short"]


def test_colour_outside_the_palette_names_file_and_colour(release):
    path = release / "v2" / "v_test" / "labels_rgb" / "3.png"
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    rgb[7, 11] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    dataset = avss(release, "test")
    with pytest.raises(DatasetError, match=r"v_test/labels_rgb/3\.png: colour \(1, 2, 3\) \(first at row 7, column 11; 1 pixels\)"):
        by_id(dataset, "v_test")
    report = check_dataset(release, "avss")
    assert not report.ok and any("(1, 2, 3)" in problem for problem in report.problems)


@pytest.mark.parametrize("frame_size", [(48, 62), (64, 40)])  # 62 px wide: centre offset 4.5 rounds to 4 (half to even)
def test_train_crop_and_eval_resize_match_the_release(tmp_path, frame_size):
    height, width = frame_size
    labels = class_map(height, width)
    for split in ("train", "val"):
        write_clip(tmp_path, "v2", f"clip_{split}", split, frame_size=frame_size, labels=labels)
    write_release(tmp_path, [("v2", "clip_train", "train"), ("v2", "clip_val", "val")])
    size = 32
    for split, crop in (("train", True), ("val", False)):
        item = avss(tmp_path, split, size=size)[0]
        clip = tmp_path / "v2" / f"clip_{split}"
        assert item["frames"].shape == (10, 3, size, size) and item["labels"].shape == (10, size, size)
        for k in (0, 9):
            assert torch.allclose(item["frames"][k], official_frame(clip / "frames" / f"{k}.jpg", size, crop), atol=1e-6)
            assert np.array_equal(item["labels"][k].numpy(), official_labels(clip / "labels_rgb" / f"{k}.png", size, crop))
    crop_item = avss(tmp_path, "val", size=size, train_crop=True)[0]  # same frames, the train geometry
    assert not torch.equal(crop_item["labels"], avss(tmp_path, "val", size=size)[0]["labels"])
    with pytest.raises(ValueError, match="square"):
        avss(tmp_path, "train", size=(32, 40))


@pytest.fixture(scope="module")
def synthetic_avss(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_avss")
    return make_synthetic(root, task="avss", size=48, seed=3, split_sizes=(3, 1, 1), write_videos=False)


def test_synthetic_avss_writes_the_release_layout(synthetic_avss):
    with open(synthetic_avss / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["label"], row["split"]) for row in rows} == {(s, p) for s in SUBSET_FRAMES for p in ("train", "val", "test")}
    assert len(rows) == 15
    names = list(json.loads((synthetic_avss / "label2idx.json").read_text()))
    assert len(names) == 71 and names[:9] == ["background", *CATEGORIES]
    for row in rows:
        clip = synthetic_avss / row["label"] / row["uid"]
        count = SUBSET_FRAMES[row["label"]]
        assert sorted(p.name for p in (clip / "frames").iterdir()) == sorted(f"{k}.jpg" for k in range(count))
        annotated = 1 if row["label"] == "v1s" and row["split"] == "train" else count
        assert len(list((clip / "labels_rgb").glob("*.png"))) == annotated and (clip / "audio.wav").is_file()
        assert Image.open(clip / "frames" / "0.jpg").format == "JPEG"
    report = check_dataset(synthetic_avss, "avss")
    assert report.ok, report.format()


def test_synthetic_avss_loads_back_and_labels_name_the_sounding_categories(synthetic_avss):
    meta = {subset: json.loads((synthetic_avss / subset / "synthetic_meta.json").read_text())["clips"] for subset in SUBSET_FRAMES}
    cfg = load_config(None, [f"data.root={synthetic_avss}", "data.task=avss", "data.layout=semantic", "data.image_size=48",
                             "data.feature_cache=off"])
    train = build_dataset(cfg, "train", train=True)
    assert len(train) == 9 and train.train_crop and not build_dataset(cfg, "val").train_crop
    batch = next(iter(DataLoader(train, batch_size=9)))
    assert batch["frames"].shape == (9, 10, 3, 48, 48) and batch["log_mel"].shape == (9, 10, 1, 96, 64)
    assert batch["labels"].shape == (9, 10, 48, 48) and batch["labels"].dtype == torch.int64
    assert batch["frame_valid"].shape == batch["mask_valid"].shape == (9, 10)
    for b, (uid, subset) in enumerate(zip(batch["video_id"], batch["subset"])):
        clip = meta[subset][uid]
        sounding = {obj["category"] for obj in clip["objects"] if obj["sounding"]}
        assert len(clip["objects"]) > len(sounding) or subset == "v1s"  # v1m/v2: always silent objects on screen
        for k in torch.nonzero(batch["mask_valid"][b]).flatten().tolist():
            classes = set(batch["labels"][b, k].unique().tolist()) - {0}
            assert classes == {CATEGORIES.index(name) + 1 for name in clip["audible"][k]}
        assert (batch["log_mel"][b][~batch["frame_valid"][b]] == 0).all()
    only = build_dataset(load_config(None, [f"data.root={synthetic_avss}", "data.task=avss", "data.layout=semantic",
                                            "data.subsets=v1m,v2", "data.feature_cache=off"]), "val")
    assert sorted(record.subset for record in only.records) == ["v1m", "v2"]


def test_avss_config_errors(synthetic_avss):
    with pytest.raises(ConfigError, match="data.layout=semantic"):
        build_dataset(load_config(None, [f"data.root={synthetic_avss}", "data.task=avss"]), "val")
    with pytest.raises(ConfigError, match="data.subsets"):
        load_config(None, ["data.subsets=v1s,v3"])
    with pytest.raises(ConfigError, match="data.flip"):
        load_config(None, ["data.flip=frame"])


def test_make_synthetic_cli_avss(tmp_path, capsys):
    assert make_synthetic_main(["--task", "avss", "--out", str(tmp_path), "--split-sizes", "1,1,1", "--size", "32",
                                "--no-videos", "--no-progress"]) == 0
    assert "wrote synthetic avss (semantic layout)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["v1m", "v1s", "v2"]
    with pytest.raises(DatasetError, match="avss"):
        make_synthetic(tmp_path / "v1", task="avss", layout="v1", split_sizes=(1, 1, 1), write_videos=False)


def test_check_dataset_class_list(release):
    assert check_dataset(release, "avss").ok
    names = list(json.loads((release / "label2idx.json").read_text()))[:70]
    (release / "label2idx.json").write_text(json.dumps({name: i for i, name in enumerate(names)}))
    report = check_dataset(release, "avss")
    assert any("label2idx.json: 70 classes, expected 71" in problem for problem in report.problems)
    with pytest.raises(DatasetError, match="70 classes, expected 71"):
        avss(release, "test")
    (release / "label2idx.json").unlink()
    report = check_dataset(release, "avss")
    assert report.ok and "data.task=avss (71 classes) needs it" in report.format()
