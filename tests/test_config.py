"""Config system: inheritance, overrides, errors naming key and file, short names, round trip."""
from pathlib import Path

import pytest

from avseg.config import CONFIG_DIR, load_config, resolve_config_path, save_config
from avseg.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.model.tpavi_stages == [0, 1, 2, 3]


def test_single_base_and_list_of_bases(tmp_path):
    write(tmp_path / "_base_" / "a.yaml", "train: {lr: 0.5, epochs: 3}\nmodel: {name: ecmvae}\n")
    write(tmp_path / "_base_" / "b.yaml", "_base_: a.yaml\ntrain: {epochs: 7}\n")
    write(tmp_path / "_base_" / "c.yaml", "data: {task: ms3}\ntrain: {batch_size: 2}\n")
    child = write(tmp_path / "exp.yaml", "_base_: [_base_/b.yaml, _base_/c.yaml]\ntrain: {batch_size: 8}\n")
    cfg = load_config(child)
    assert cfg.train.lr == 0.5  # from the grandparent
    assert cfg.train.epochs == 7  # parent overrides grandparent
    assert cfg.data.task == "ms3"  # second base
    assert cfg.train.batch_size == 8  # the file itself wins
    assert cfg.model.name == "ecmvae"
    assert cfg.name == "exp"


def test_lists_are_replaced_not_concatenated(tmp_path):
    write(tmp_path / "base.yaml", "model: {tpavi_stages: [0, 1]}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nmodel: {tpavi_stages: [3]}\n")
    assert load_config(child).model.tpavi_stages == [3]


def test_overrides_are_typed(tmp_path):
    path = write(tmp_path / "x.yaml", "train: {lr: 0.1}\n")
    cfg = load_config(path, ["train.lr=5e-5", "data.root=/data/avs", "model.tpavi_stages=[1,2]", "model.backbone.weights=null"])
    assert cfg.train.lr == pytest.approx(5e-5)
    assert isinstance(cfg.train.lr, float)
    assert cfg.data.root == "/data/avs"
    assert cfg.model.tpavi_stages == [1, 2]
    assert cfg.model.backbone.weights is None


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "train: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "train.learning_rate" in str(info.value)
    assert "bad.yaml" in str(info.value)


def test_unknown_key_in_base_names_the_base(tmp_path):
    write(tmp_path / "base.yaml", "model: {backbone: {nam: resnet50}}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert "base.yaml" in str(info.value) and "model.backbone.nam" in str(info.value)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "train: {epochs: many}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "train.epochs" in str(info.value) and "bad.yaml" in str(info.value)


def test_bad_override_is_reported(tmp_path):
    path = write(tmp_path / "x.yaml", "{}\n")
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config(path, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(path, ["train.batch_size=four"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["train.lr"])


def test_missing_base_and_missing_file(tmp_path):
    child = write(tmp_path / "child.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(child)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_short_name_resolves_into_configs_dir():
    shipped = sorted(CONFIG_DIR.glob("*.yaml"))
    assert shipped, "configs/ ships top-level configs"
    name = shipped[0].name
    assert resolve_config_path(name) == CONFIG_DIR / name
    assert resolve_config_path(shipped[0].stem) == CONFIG_DIR / name


def test_every_shipped_config_loads():
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        if "_base_" in path.parts:
            continue
        cfg = load_config(path)
        assert cfg.name == path.stem


def test_saved_config_round_trip(tmp_path):
    write(tmp_path / "base.yaml", "train: {lr: 0.25}\n")
    path = write(tmp_path / "exp.yaml", "_base_: base.yaml\ndata: {task: ms3}\n")
    cfg = load_config(path, ["train.epochs=2"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == cfg


def test_yaml_words_stay_strings_and_exponents_are_floats(tmp_path):
    path = write(tmp_path / "x.yaml", "data: {feature_cache: off, audio_source: no}\ntrain: {lr: 5e-5}\n")
    cfg = load_config(path, ["data.resampler=off", "deterministic=true"])
    assert cfg.data.feature_cache == "off"
    assert cfg.data.audio_source == "no"
    assert cfg.data.resampler == "off"
    assert cfg.train.lr == pytest.approx(5e-5)
    assert cfg.deterministic is True
