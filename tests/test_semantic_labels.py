"""AVSBench-semantic palette, colour mask ↔ class map, and label2idx.json."""
import json

import numpy as np
import pytest
from PIL import Image

from avseg.data.semantic_labels import (
    AVSS_PALETTE,
    classes_to_colours,
    colours_to_classes,
    read_class_names,
    read_label_image,
    semantic_palette,
)
from avseg.errors import DatasetError


def official_getpallete(num_cls):
    """Transcription of ``_getpallete`` in the official ``avss/color_dataloader.py`` (flat list of 3 * n)."""
    pallete = [0] * (num_cls * 3)
    for j in range(0, num_cls):
        lab = j
        i = 0
        while lab > 0:
            pallete[j * 3 + 0] |= ((lab >> 0) & 1) << (7 - i)
            pallete[j * 3 + 1] |= ((lab >> 1) & 1) << (7 - i)
            pallete[j * 3 + 2] |= ((lab >> 2) & 1) << (7 - i)
            i = i + 1
            lab >>= 3
    return pallete


def test_palette_is_the_official_one():
    assert AVSS_PALETTE.shape == (71, 3) and AVSS_PALETTE.dtype == np.uint8
    np.testing.assert_array_equal(AVSS_PALETTE, np.array(official_getpallete(71)).reshape(-1, 3))
    assert [tuple(AVSS_PALETTE[j]) for j in (0, 1, 2, 3, 4, 8)] == [
        (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (64, 0, 0)]
    assert len({tuple(colour) for colour in semantic_palette(256)}) == 256


def test_label_round_trip_through_png(tmp_path):
    classes = np.random.default_rng(0).integers(0, 71, size=(13, 17))
    classes[0, 0] = 70
    rgb = classes_to_colours(classes)
    assert rgb.shape == (13, 17, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(colours_to_classes(rgb), classes)
    path = tmp_path / "0.png"
    Image.fromarray(rgb).save(path)
    decoded = read_label_image(path)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, classes)
    all_classes = np.arange(71).reshape(1, 71)
    np.testing.assert_array_equal(colours_to_classes(classes_to_colours(all_classes)), all_classes)


def test_malformed_colour_names_file_and_colour(tmp_path):
    rgb = classes_to_colours(np.zeros((6, 5), dtype=np.int64))
    rgb[2, 3] = (127, 0, 0)  # next to class 1's (128, 0, 0), as a resampled edge would be
    rgb[4, 1] = (127, 0, 0)
    path = tmp_path / "3.png"
    Image.fromarray(rgb).save(path)
    with pytest.raises(DatasetError, match=r"3\.png: colour \(127, 0, 0\) \(first at row 2, column 3; 2 pixels\)"):
        read_label_image(path)
    with pytest.raises(DatasetError, match="not in the 71-class"):
        colours_to_classes(rgb, "clip/labels_rgb/3.png")
    with pytest.raises(ValueError, match="0..70"):
        classes_to_colours(np.array([[71]]))


def test_class_names_follow_key_order_and_count(tmp_path):
    names = ["background"] + [f"class_{i:02d}" for i in range(70)]
    path = tmp_path / "label2idx.json"
    path.write_text(json.dumps({name: i + 1 for i, name in enumerate(names)}))
    assert read_class_names(path) == names
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"background": 1, "dog": 2}))
    with pytest.raises(DatasetError, match="2 classes, expected 71"):
        read_class_names(short)
    assert read_class_names(short, num_classes=None) == ["background", "dog"]
    broken = tmp_path / "broken.json"
    broken.write_text("{'background': 1}")
    with pytest.raises(DatasetError, match="broken.json: not valid JSON"):
        read_class_names(broken)
    with pytest.raises(DatasetError, match="cannot read"):
        read_class_names(tmp_path / "missing.json")
