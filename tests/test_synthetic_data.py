"""The synthetic AVSBench: official layout, determinism, and a task that only sound can solve."""
import colorsys
import json

import av
import numpy as np
import pytest
import torch

from avseg.audio import waveform_to_examples
from avseg.cli.make_synthetic import main as make_synthetic_main
from avseg.data import read_v1_index
from avseg.data.check import check_dataset
from avseg.data.safe_pickle import load_tensor_pickle
from avseg.data.synthetic import CATEGORIES, category_sound, make_synthetic, render_clip
from avseg.errors import DatasetError


def clips(task, count, size=48, seed=5):
    return [render_clip(np.random.default_rng([seed, i]), task, size) for i in range(count)]


def test_fixtures_are_complete_official_layout(synthetic_s4_root, synthetic_ms3_root):
    for root, task in ((synthetic_s4_root, "s4"), (synthetic_ms3_root, "ms3")):
        report = check_dataset(root, task)
        assert report.ok, report.format()
        assert report.clips == {"train": 4, "val": 2, "test": 2}
    assert report.masks == {"train": 20, "val": 10, "test": 10}
    s4 = (synthetic_s4_root / "Single-source" / "s4_meta_data.csv").read_text().splitlines()
    assert s4[0] == "name,start_time,category,split" and s4[1].split(",")[2] in CATEGORIES
    meta = json.loads((synthetic_s4_root / "Single-source" / "synthetic_meta.json").read_text())
    assert meta["categories"] == list(CATEGORIES) and len(meta["clips"]) == 8


def test_deterministic_per_seed(tmp_path):
    def generate(name, seed):
        root = make_synthetic(tmp_path / name, "ms3", size=32, seed=seed, split_sizes=(2, 1, 1), write_videos=False)
        return read_v1_index(root, "ms3")

    first, again, other = generate("a", 7), generate("b", 7), generate("c", 8)
    for a, b in zip(first, again):
        for x, y in zip(a.frames + a.masks + (a.wav,), b.frames + b.masks + (b.wav,)):
            assert x.read_bytes() == y.read_bytes()
        assert torch.equal(load_tensor_pickle(a.log_mel), load_tensor_pickle(b.log_mel))
    assert first[0].frames[0].read_bytes() != other[0].frames[0].read_bytes()


def test_s4_one_sounder_and_salient_distractors():
    rendered = clips("s4", 40)
    assert len(CATEGORIES) >= 8
    with_distractors = 0
    sounder_area, distractor_area = [], []
    for clip in rendered:
        sounding = [o["category"] for o in clip.objects if o["sounding"]]
        categories = [o["category"] for o in clip.objects]
        assert sounding == [clip.category] and len(set(categories)) == len(categories) <= 4
        assert clip.audible == [sounding] * 5 and clip.masks.any(axis=(1, 2)).all()
        assert clip.frames.shape == (5, 48, 48, 3) and clip.waveform.shape == (80000,)
        if len(categories) > 1:
            with_distractors += 1
            background = clip.frames[0, 0, 0] if not clip.masks[0, 0, 0] else clip.frames[0, -1, -1]
            objects = (clip.frames[0] != background).any(axis=-1)
            sounder_area.append(clip.masks[0].sum())
            distractor_area.append((objects & ~clip.masks[0]).sum() / (len(categories) - 1))
    assert with_distractors >= 30  # most clips have silent distractors
    ratio = np.mean(sounder_area) / np.mean(distractor_area)
    assert 0.7 < ratio < 1.4  # a sounding object is no bigger or smaller than a silent one


def test_ms3_changing_mixtures_and_silent_seconds():
    rendered = clips("ms3", 30)
    silent_seconds = 0
    for clip in rendered:
        sounding = {o["category"] for o in clip.objects if o["sounding"]}
        assert 2 <= len(sounding) <= 3 and 1 <= len(clip.objects) - len(sounding) <= 2  # silent objects in every clip
        assert set().union(*map(set, clip.audible)) == sounding  # every source is heard at some point
        for second, audible in enumerate(clip.audible):
            assert set(audible) <= sounding
            assert clip.masks[second].any() == bool(audible)
            silent_seconds += not audible
    assert silent_seconds > 0
    assert sum(len({tuple(a) for a in clip.audible}) > 1 for clip in rendered) >= 25  # the audible set changes


def sounder_hue_offsets(colours):
    """Circular distance [clips] between each S4 sounder's hue and its category's hue c / 8."""
    offsets = []
    for clip in [render_clip(np.random.default_rng([3, i]), "s4", 48, colours=colours) for i in range(30)]:
        red, green, blue = clip.frames[0][clip.masks[0]][0] / 255.0
        hue = colorsys.rgb_to_hsv(red, green, blue)[0]
        offset = abs(hue - CATEGORIES.index(clip.category) / len(CATEGORIES))
        offsets.append(min(offset, 1.0 - offset))
    return np.array(offsets)


def test_category_colours_tie_hue_to_category_and_random_colours_do_not():
    assert sounder_hue_offsets("category").max() <= 1 / 64 + 0.01  # ±1/64 jitter, 8-bit rounding
    assert (sounder_hue_offsets("random") > 1 / 32).mean() > 0.5
    with pytest.raises(DatasetError, match="colour mode"):
        render_clip(np.random.default_rng(0), "s4", 48, colours="rainbow")


def test_sound_tells_the_category():
    """Nearest reference spectrum of the clip's mean log-mel recovers the sounding category in every clip."""
    rng = np.random.default_rng(0)
    references = torch.stack(
        [waveform_to_examples(0.3 * category_sound(c, 16000 * 2, rng), 16000).mean(dim=(0, 1, 2)) for c in range(len(CATEGORIES))]
    )
    rendered = clips("s4", 24, size=32, seed=11)
    for clip in rendered:
        spectrum = waveform_to_examples(clip.waveform, 16000).mean(dim=(0, 1, 2))
        guess = CATEGORIES[int(torch.cdist(spectrum[None], references).argmin())]
        assert guess == clip.category
    assert len({clip.category for clip in rendered}) >= 6


def test_cli_writes_raw_videos_with_audio(tmp_path, capsys):
    assert make_synthetic_main(["--task", "s4", "--out", str(tmp_path), "--split-sizes", "1,1,1", "--size", "32", "--no-progress"]) == 0
    assert "wrote synthetic s4" in capsys.readouterr().out
    record = read_v1_index(tmp_path, "s4")[0]
    with av.open(str(record.raw_video)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        assert abs(float(container.duration / av.time_base) - 5.0) < 0.2
    with pytest.raises(DatasetError, match="even"):
        make_synthetic(tmp_path / "odd", "s4", size=33, split_sizes=(1, 1, 1))
