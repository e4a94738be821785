"""AVSBench loaders (v1 S4/MS3, semantic layout), audio sources, safe .pkl loading, augmentation, build_dataset."""
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from avseg.config import load_config
from avseg.data import DATASETS, AVSBenchDataset, ClipAugment, build_dataset, load_tensor_pickle, read_v1_index
from avseg.data.avsbench_dataset import IMAGENET_MEAN, IMAGENET_STD, mask_foreground
from avseg.data.synthetic import make_synthetic
from avseg.errors import DatasetError


def check_item(item, num_frames=5, size=64):
    assert item["frames"].shape == (num_frames, 3, size, size) and item["frames"].dtype == torch.float32
    assert item["log_mel"].shape == (num_frames, 1, 96, 64) and item["log_mel"].dtype == torch.float32
    assert item["masks"].shape == (num_frames, 1, size, size) and item["masks"].dtype == torch.float32
    assert set(item["masks"].unique().tolist()) <= {0.0, 1.0}
    assert item["mask_valid"].shape == (num_frames,) and item["mask_valid"].dtype == torch.bool
    assert isinstance(item["video_id"], str) and isinstance(item["category"], str)


def test_s4_train_has_only_first_mask(synthetic_s4_root):
    dataset = AVSBenchDataset(synthetic_s4_root, "s4", "train", image_size=64, feature_cache="off")
    assert len(dataset) == 4
    item = dataset[0]
    check_item(item)
    assert item["mask_valid"].tolist() == [True, False, False, False, False]
    assert item["masks"][0].sum() > 0 and item["masks"][1:].sum() == 0
    record = dataset.records[0]
    assert item["category"] == record.category and record.category in record.frames[0].parts


def test_s4_eval_frames_and_values(synthetic_s4_root):
    dataset = AVSBenchDataset(synthetic_s4_root, "s4", "val", image_size=64, feature_cache="off")
    item = dataset[1]
    check_item(item)
    assert item["mask_valid"].all() and (item["masks"].flatten(1).sum(1) > 0).all()  # S4: sounds in every second
    pixels = np.asarray(Image.open(dataset.records[1].frames[2]).convert("RGB"), dtype=np.float32) / 255
    expected = (torch.from_numpy(pixels).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(item["frames"][2], expected, atol=1e-6)


def test_ms3_names_and_all_masks(synthetic_ms3_root):
    dataset = AVSBenchDataset(synthetic_ms3_root, "ms3", "train", image_size=64, feature_cache="off")
    record = dataset.records[0]
    name = record.video_id
    assert record.frames[3] == synthetic_ms3_root / "Multi-sources" / "ms3_data" / "visual_frames" / name / f"{name}.mp4_4.png"
    assert record.masks[3] == synthetic_ms3_root / "Multi-sources" / "ms3_data" / "gt_masks" / "train" / name / f"{name}_4.png"
    items = [dataset[i] for i in range(len(dataset))]
    for item in items:
        check_item(item)
        assert item["mask_valid"].all()
    per_frame = torch.cat([item["masks"].flatten(1).sum(1) for item in items])
    assert (per_frame == 0).any() or len(per_frame) < 10  # silent seconds give empty masks


def test_resize_masks_nearest(synthetic_ms3_root):
    item = AVSBenchDataset(synthetic_ms3_root, "ms3", "val", image_size=(40, 48), feature_cache="off")[0]
    assert item["frames"].shape == (5, 3, 40, 48) and item["masks"].shape == (5, 1, 40, 48)
    assert set(item["masks"].unique().tolist()) <= {0.0, 1.0}


def test_audio_sources_and_feature_cache(synthetic_s4_root, tmp_path):
    from_pkl = AVSBenchDataset(synthetic_s4_root, "s4", "test", image_size=64, audio_source="pkl")[0]["log_mel"]
    cache = tmp_path / "cache"
    wav_dataset = AVSBenchDataset(synthetic_s4_root, "s4", "test", image_size=64, audio_source="wav", feature_cache=cache)
    from_wav = wav_dataset[0]["log_mel"]
    assert torch.allclose(from_pkl, from_wav, atol=1e-5)
    cached = list(cache.glob("*.pt"))
    assert len(cached) == 1
    torch.save(torch.full((5, 1, 96, 64), 7.0), cached[0])  # the cache, not the wav, must be read now
    assert (wav_dataset[0]["log_mel"] == 7.0).all()


def test_auto_falls_back_to_wav_and_errors_name_files(synthetic_s4_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_s4_root, root)
    record = read_v1_index(root, "s4")[0]
    record.log_mel.unlink()
    auto = AVSBenchDataset(root, "s4", "train", image_size=64, audio_source="auto", feature_cache="off")
    assert auto[0]["log_mel"].shape == (5, 1, 96, 64)
    with pytest.raises(DatasetError, match=str(record.log_mel)):
        AVSBenchDataset(root, "s4", "train", image_size=64, audio_source="pkl")[0]
    record.frames[1].unlink()
    with pytest.raises(DatasetError, match=r"missing frame: .*_2\.png \(expected S4 v1 layout"):
        auto[0]
    with pytest.raises(DatasetError, match="splits present"):
        AVSBenchDataset(root, "s4", "nosuchsplit")
    with pytest.raises(DatasetError, match="s4_meta_data.csv"):
        AVSBenchDataset(tmp_path, "s4", "train")


@pytest.fixture(scope="module")
def semantic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantic")
    for task in ("s4", "ms3", "v2"):
        make_synthetic(root, task=task, size=64, seed=1, layout="semantic", split_sizes=(2, 1, 1), write_videos=False)
    return root


def test_semantic_layout(semantic_root):
    v1s = AVSBenchDataset(semantic_root, "s4", "train", layout="semantic", image_size=64, feature_cache="off")
    item = v1s[0]
    check_item(item)
    assert item["mask_valid"].tolist() == [True, False, False, False, False]
    assert v1s.records[0].frames[0] == semantic_root / "v1s" / item["video_id"] / "frames" / "0.jpg"
    labels = np.asarray(Image.open(v1s.records[0].masks[0]).convert("RGB"))
    assert torch.equal(item["masks"][0, 0].bool(), torch.from_numpy(labels.any(axis=-1)))

    v1m = AVSBenchDataset(semantic_root, "v1m", "val", layout="semantic", image_size=64, feature_cache="off")
    check_item(v1m[0])
    assert v1m[0]["mask_valid"].all()
    v2 = AVSBenchDataset(semantic_root, "v2", "train", layout="semantic", image_size=64, feature_cache="off")
    check_item(v2[0], num_frames=10)
    assert len(v1s) == 2 and len(v1m) == 1 and len(v2) == 2
    with pytest.raises(DatasetError, match="no .pkl"):
        AVSBenchDataset(semantic_root, "s4", "train", layout="semantic", audio_source="pkl")


def test_mask_binarisation_modes():
    index = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    palette = Image.fromarray(index, mode="P")
    palette.putpalette([0, 0, 0, 0, 0, 0, 255, 255, 255] + [0] * 759)  # index 1 is black in the palette
    assert mask_foreground(palette).tolist() == [[False, True], [True, False]]
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 1, 2] = 128
    assert mask_foreground(Image.fromarray(rgb)).tolist() == [[False, True], [False, False]]
    assert mask_foreground(Image.fromarray(index * 127)).tolist() == [[False, True], [True, False]]


def test_official_pickle_loads_detached(tmp_path):
    tensor = torch.tensor(np.random.default_rng(0).standard_normal((5, 96, 64)), requires_grad=True)[:, None].float()
    (tmp_path / "clip.pkl").write_bytes(pickle.dumps(tensor))  # exactly how preprocess_s4.py writes them
    loaded = load_tensor_pickle(tmp_path / "clip.pkl")
    assert torch.equal(loaded, tensor.detach()) and not loaded.requires_grad
    (tmp_path / "strided.pkl").write_bytes(pickle.dumps(tensor.detach()[1:4, :, ::2], protocol=2))
    assert torch.equal(load_tensor_pickle(tmp_path / "strided.pkl"), tensor.detach()[1:4, :, ::2])


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(DatasetError, match=r"evil\.pkl: refused to unpickle.*system"):
        load_tensor_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DatasetError, match="holds a list"):
        load_tensor_pickle(tmp_path / "list.pkl")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(torch.zeros(3))[:40])
    with pytest.raises(DatasetError, match="cut.pkl"):
        load_tensor_pickle(tmp_path / "cut.pkl")


def test_clip_augment_is_clip_consistent():
    torch.manual_seed(0)
    masks = (torch.rand(5, 1, 4, 4) > 0.5).float().repeat_interleave(8, -1).repeat_interleave(8, -2)  # 8-px blocks
    frames = masks.expand(5, 3, 32, 32).clone()
    flipped_frames, flipped_masks = ClipAugment(hflip_prob=1.0)(frames, masks)
    assert torch.equal(flipped_masks, masks.flip(-1)) and torch.equal(flipped_frames, frames.flip(-1))
    out_frames, out_masks = ClipAugment(hflip_prob=0.5, scale_crop=0.5, generator=torch.Generator().manual_seed(3))(frames, masks)
    assert out_frames.shape == frames.shape and out_masks.shape == masks.shape
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    agreement = ((out_frames[:, :1] > 0.5).float() == out_masks).float().mean()
    assert agreement > 0.95  # frames and masks got the same flip and crop


def test_build_dataset_and_collate(synthetic_s4_root, monkeypatch):
    cfg = load_config(None, [f"data.root={synthetic_s4_root}", "data.image_size=64", "data.hflip_prob=0.5", "data.feature_cache=off"])
    train = build_dataset(cfg, "train", train=True)
    evaluation = build_dataset(cfg, "val", train=False)
    assert isinstance(train.transform, ClipAugment) and evaluation.transform is None
    batch = next(iter(DataLoader(evaluation, batch_size=2)))
    assert batch["frames"].shape == (2, 5, 3, 64, 64) and batch["log_mel"].shape == (2, 5, 1, 96, 64)
    assert batch["mask_valid"].shape == (2, 5) and len(batch["video_id"]) == 2

    monkeypatch.setitem(DATASETS, "fashion_mnist", lambda cfg, split, train: ("vae", split, train))
    vae_cfg = load_config(None, ["data.name=fashion_mnist"])
    assert build_dataset(vae_cfg, "val", train=False) == ("vae", "val", False)
