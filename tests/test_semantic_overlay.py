"""Semantic (AVSS) demo outputs: palette overlay of class maps, legend of the classes present, per-class RLE."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from avseg.config import load_config
from avseg.data.semantic_labels import AVSS_PALETTE, colours_to_classes
from avseg.errors import DatasetError, MediaError
from avseg.evaluation.rle import decode_class_map, decode_mask, encode_class_map
from avseg.inference import overlay
from avseg.inference.outputs import ClassTally, class_names_for, legend_json_path, write_legend, write_outputs
from avseg.inference.segmenter import Segmenter
from avseg.inference.video import choose_fps

from test_demo import streams
from test_segmenter import write_video

NUM_CLASSES = 12


def hand_made_class_maps():
    """[3, 20, 30] class maps: background 0, a block of class 1, a block of class 8 touching it, class 70 at a corner."""
    classes = np.zeros((3, 20, 30), np.int64)
    for t in range(3):
        classes[t, 2:10, 2 + t:12 + t] = 1
        classes[t, 5:15, 12 + t:25] = 8
    classes[2, 16:, 26:] = 70  # touches the image border
    return classes


def reference_overlay(image, classes, alpha, thickness):
    """Per-pixel transcription: blend the palette colour over each non-background pixel; a non-background
    pixel with another class (or the outside of the image) within ``thickness`` pixels is drawn opaque."""
    height, width = classes.shape
    out = image.copy()
    for y in range(height):
        for x in range(width):
            label = classes[y, x]
            if label == 0:
                continue
            colour = AVSS_PALETTE[label].astype(np.float64)
            out[y, x] = np.round((1 - alpha) * image[y, x].astype(np.float64) + alpha * colour).astype(np.uint8)
            near = [(y + dy, x + dx) for dy in range(-thickness, thickness + 1) for dx in range(-thickness, thickness + 1)]
            if any(not (0 <= v < height and 0 <= u < width) or classes[v, u] != label for v, u in near):
                out[y, x] = AVSS_PALETTE[label]
    return out


def test_overlay_classes_matches_a_per_pixel_transcription():
    classes = hand_made_class_maps()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    drawn = overlay.overlay_classes(frames, classes, alpha=0.5)
    assert drawn.shape == frames.shape and drawn.dtype == np.uint8
    for t in range(3):
        np.testing.assert_array_equal(drawn[t], reference_overlay(frames[t], classes[t], 0.5, thickness=1))
        np.testing.assert_array_equal(drawn[t], overlay.overlay_classes(frames[t], classes[t]))  # one frame alone
    np.testing.assert_array_equal(drawn[classes == 0], frames[classes == 0])  # background untouched
    assert (drawn[1, 7, 5] != frames[1, 7, 5]).any()  # inside class 1: tinted, not opaque
    np.testing.assert_array_equal(drawn[0, 2, 2], AVSS_PALETTE[1])  # its corner: the contour, opaque

    uint8_maps = overlay.overlay_classes(frames, classes.astype(np.uint8))  # H3's class maps are uint8
    np.testing.assert_array_equal(uint8_maps, drawn)
    no_contour = overlay.overlay_classes(frames[0], classes[0], contour=False)
    np.testing.assert_array_equal(no_contour[2, 2], np.round(0.5 * frames[0, 2, 2] + 0.5 * AVSS_PALETTE[1]).astype(np.uint8))


def test_overlay_prediction_picks_binary_or_palette():
    image = np.full((16, 16, 3), 90, np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    np.testing.assert_array_equal(overlay.overlay_prediction(image, mask), overlay.overlay_mask(image, mask))
    np.testing.assert_array_equal(overlay.overlay_prediction(image, mask.astype(np.uint8) * 3),
                                  overlay.overlay_classes(image, mask.astype(np.uint8) * 3))
    assert overlay.class_boundaries(mask.astype(np.uint8))[mask].sum() == overlay.mask_contour(mask).sum()


@pytest.mark.parametrize("classes, palette, message", [
    (np.full((4, 5), 71), AVSS_PALETTE, "0..70"), (np.full((4, 5), 256), None, "0..255"),
    (np.full((4, 5), -1), None, "0..255"), (np.zeros((4, 5), np.float32), None, "integers"),
    (np.zeros((4, 6), np.int64), None, "differ in size"),
])
def test_overlay_classes_refuses_bad_class_maps(classes, palette, message):
    with pytest.raises(ValueError, match=message):
        overlay.overlay_classes(np.zeros((4, 5, 3), np.uint8), classes, **({} if palette is None else {"palette": palette}))


def test_the_drawing_palette_is_the_official_one_extended():
    np.testing.assert_array_equal(overlay.CLASS_PALETTE[:71], AVSS_PALETTE)
    assert len({tuple(colour) for colour in overlay.CLASS_PALETTE}) == 256


def test_per_class_rle_round_trip():
    classes = hand_made_class_maps()
    names = [f"name{index}" for index in range(71)]
    for frame in classes:
        entries = encode_class_map(frame, names)
        assert [entry["class"] for entry in entries] == sorted(set(np.unique(frame)) - {0})
        for entry in entries:
            assert entry["name"] == names[entry["class"]]
            np.testing.assert_array_equal(decode_mask(entry["segmentation"]), frame == entry["class"])
        json.dumps(entries)  # JSON-ready
        np.testing.assert_array_equal(decode_class_map(entries, frame.shape), frame)
    assert encode_class_map(np.zeros((3, 4), np.uint8)) == []
    overlapping = encode_class_map(classes[0]) + [{"class": 5, "segmentation": encode_class_map(classes[0])[0]["segmentation"]}]
    with pytest.raises(ValueError, match="overlaps"):
        decode_class_map(overlapping, classes[0].shape)
    with pytest.raises(ValueError, match="no name"):
        encode_class_map(classes[2], names[:10])


def test_legend_lists_the_classes_present_with_names(tmp_path):
    classes = hand_made_class_maps()
    tally = ClassTally(71)
    for frame in classes:
        tally.add(frame)
    label2idx = tmp_path / "label2idx.json"
    label2idx.write_text(json.dumps({name: index + 1 for index, name in enumerate(["background"] + [f"c{k}" for k in range(1, 71)])}))
    names = class_names_for(71, label2idx)
    entries = tally.legend(names)
    assert [entry["class"] for entry in entries] == [1, 8, 70]
    for entry in entries:
        present = classes == entry["class"]
        assert entry["name"] == f"c{entry['class']}"
        assert entry["colour"] == AVSS_PALETTE[entry["class"]].tolist()
        assert entry["frames"] == int(present.any(axis=(1, 2)).sum())
        assert entry["pixel_fraction"] == pytest.approx(present.mean(), abs=1e-6)
    assert class_names_for(3) == ["background", "class 1", "class 2"]
    assert class_names_for(2, ["silence", "dog"]) == ["silence", "dog"]
    with pytest.raises(MediaError, match="3 class names given for a model with 2"):
        class_names_for(2, ["a", "b", "c"])
    with pytest.raises(DatasetError, match="label2idx.json: 71 classes, expected 12"):
        class_names_for(12, label2idx)

    legend = write_legend(tmp_path / "out" / "legend.png", entries, frames=3)
    image = np.asarray(Image.open(legend).convert("RGB"))
    assert image.shape[0] == 3 * 28 + 8
    for entry in entries:  # each swatch shows its palette colour
        assert (image.reshape(-1, 3) == entry["colour"]).all(axis=1).sum() > 50
    document = json.loads(legend_json_path(legend).read_text())
    assert document["classes"] == entries and document["frames"] == 3 and document["background"] == 0
    assert sorted(p.name for p in legend.parent.iterdir()) == ["legend.json", "legend.png"]
    assert overlay.legend_image([]).shape[0] == 36  # "no class present"


class SemanticProbe(torch.nn.Module):
    """A 12-class model without weights: class 5 where a frame is red, class 9 on its left quarter, else
    background (its logit 1 is above the other classes' 0, so no two classes tie)."""

    def forward(self, frames, log_mel, masks=None, mask_valid=None):
        batch, time, _, height, width = frames.shape
        logits = torch.zeros(batch, time, NUM_CLASSES, height, width)
        logits[:, :, 0] = 1
        logits[:, :, 5] = 4 * (frames[:, :, 0] - frames[:, :, 1]) - 2
        left = (torch.arange(width) < width // 4).float() * 6 - 3
        logits[:, :, 9] = left.expand(height, width)
        return {"logits": logits}


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("semantic")
    video = write_video(folder / "in.mp4", 2.0, fps=5, size=(64, 48))
    seg = Segmenter(SemanticProbe(), load_config(None, ["data.image_size=32"]), device="cpu")
    media = seg.open_video(video)
    return folder, media, seg.predict_media(media, choose_fps(media.info.fps))


def test_semantic_prediction_outputs(semantic_run, tmp_path):
    _, media, result = semantic_run
    assert result.num_classes == NUM_CLASSES
    out, masks, rle, strip, legend = (tmp_path / name for name in ("o.mp4", "masks", "m.json", "s.png", "legend.png"))
    names = [f"n{index}" for index in range(NUM_CLASSES)]
    summary = write_outputs(media, result, out=out, save_masks=masks, rle=rle, strip=strip, legend=legend, class_names=names)
    assert streams(out)[0] == len(result) == 10

    class_maps = result.class_maps
    assert set(np.unique(class_maps).tolist()) == {0, 5, 9}
    document = json.loads(rle.read_text())
    assert document["num_classes"] == NUM_CLASSES and document["class_names"] == names
    for index, (png, item) in enumerate(zip(sorted(masks.glob("*.png")), document["frames"])):
        expected = class_maps[index]
        np.testing.assert_array_equal(colours_to_classes(np.asarray(Image.open(png).convert("RGB"))), expected)
        np.testing.assert_array_equal(decode_class_map(item["classes"], expected.shape), expected)
        assert {entry["name"] for entry in item["classes"]} == {names[c] for c in set(np.unique(expected)) - {0}}

    tally = ClassTally(NUM_CLASSES)
    for frame in class_maps:
        tally.add(frame)
    assert summary["classes"] == tally.legend(names)
    assert json.loads(legend_json_path(legend).read_text())["classes"] == summary["classes"]
    np.testing.assert_allclose(summary["coverage"], (class_maps != 0).mean(axis=(1, 2)))
    assert Image.open(strip).size[1] > 48
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legend.json", "legend.png", "m.json", "masks", "o.mp4", "s.png"]


def test_legend_of_a_binary_model_is_refused_before_writing(tmp_path):
    from test_segmenter import ProbeModel

    video = write_video(tmp_path / "in.mp4", 1.0, fps=4)
    seg = Segmenter(ProbeModel(), load_config(None, ["data.image_size=32"]), device="cpu")
    media = seg.open_video(video)
    result = seg.predict_media(media, choose_fps(media.info.fps))
    with pytest.raises(MediaError, match="binary .* a legend needs a semantic model"):
        write_outputs(media, result, out=tmp_path / "o.mp4", legend=tmp_path / "legend.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


@pytest.fixture(scope="module")
def semantic_checkpoint(tmp_path_factory):
    from avseg.checkpoint import save_checkpoint
    from avseg.models import build_model

    from test_segmenter import TINY_MODEL

    torch.manual_seed(0)
    cfg = load_config(None, TINY_MODEL + ["model.num_classes=71"])
    path = tmp_path_factory.mktemp("semantic_ckpt") / "avss.pth"
    save_checkpoint(path, build_model(cfg).state_dict(), cfg)
    return path


def test_demo_command_colours_a_71_class_tpavi(tmp_path, semantic_checkpoint, capsys):
    """tools/demo.py on a (randomly initialised) 71-class TPAVI checkpoint: palette PNGs, per-class RLE, legend."""
    from avseg.cli.common import run_cli
    from avseg.cli.demo import main

    video = write_video(tmp_path / "in.mp4", 2.0, fps=4)
    label2idx = tmp_path / "label2idx.json"
    label2idx.write_text(json.dumps({name: index + 1 for index, name in enumerate(["background"] + [f"c{k}" for k in range(1, 71)])}))
    out = tmp_path / "out"
    argv = ["--ckpt", str(semantic_checkpoint), "--video", str(video), "--out", str(out / "o.mp4"), "--quiet",
            "--save-masks", str(out / "masks"), "--rle", str(out / "m.json"), "--legend", str(out / "legend.png"),
            "--class-names", str(label2idx)]
    with pytest.raises(SystemExit) as stop:
        run_cli(main, argv)
    assert stop.value.code == 0
    document = json.loads((out / "m.json").read_text())
    assert document["num_classes"] == 71 and len(document["frames"]) == 8 == streams(out / "o.mp4")[0]
    present = set()
    for png, item in zip(sorted((out / "masks").glob("*.png")), document["frames"]):
        classes = colours_to_classes(np.asarray(Image.open(png).convert("RGB")))
        np.testing.assert_array_equal(decode_class_map(item["classes"], classes.shape), classes)
        present |= set(np.unique(classes).tolist()) - {0}
    legend = json.loads((out / "legend.json").read_text())["classes"]
    assert [entry["class"] for entry in legend] == sorted(present) and present
    assert all(entry["name"] == f"c{entry['class']}" for entry in legend)
    assert f"classes: {legend[0]['class']} {legend[0]['name']}" in capsys.readouterr().out
