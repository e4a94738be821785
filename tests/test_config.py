"""Config system: inheritance, overrides, errors naming key and file, choices and ranges, short names, round trip."""
import dataclasses
from pathlib import Path

import pytest

from avseg import config as C
from avseg.config import CONFIG_DIR, apply_overrides, config_from_dict, config_to_dict, load_config, resolve_config_path, save_config
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
    path = write(tmp_path / "x.yaml", "data: {feature_cache: off, train_split: no}\ntrain: {lr: 5e-5}\n")
    cfg = load_config(path, ["eval.split=off", "deterministic=true"])
    assert cfg.data.feature_cache == "off"
    assert cfg.data.train_split == "no"
    assert cfg.eval.split == "off"
    assert cfg.train.lr == pytest.approx(5e-5)
    assert cfg.deterministic is True


# ----------------------------------------------------------------------------- choices and ranges
@pytest.mark.parametrize("override, shown, allowed", [
    ("data.image_size=0", "0", ">= 32"),
    ("data.image_size=-64", "-64", ">= 32"),
    ("eval.batch_size=0", "0", ">= 1"),
    ("data.num_workers=-1", "-1", ">= 0"),
    ("train.batch_size=-1", "-1", ">= 1"),
    ("data.hflip_prob=1.5", "1.5", "[0.0, 1.0]"),
    ("model.tpavi_stages=[0,4]", "4 (element of [0, 4])", "[0, 3]"),
    ("model.vae.gaussian_variance=0", "0.0", "> 0.0"),
    ("train.lr=.nan", "nan", ">= 0.0"),
])
def test_out_of_range_override_names_key_value_and_range(override, shown, allowed):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as info:
        load_config("ms3.yaml", [override])
    assert str(info.value) == f"command-line override '{override}': key '{key}': {shown} is out of range; allowed: {allowed}"


def test_bad_choice_names_the_file_that_set_it_and_the_allowed_values(tmp_path):
    write(tmp_path / "base.yaml", "model: {seg_loss: dice}\ntrain: {amp: bf17}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain: {amp: bf16}\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert str(info.value) == f"{tmp_path / 'base.yaml'}: key 'model.seg_loss': 'dice' is not one of bce, structure"
    cfg = load_config(child, ["model.seg_loss=structure"])  # a later layer may repair a bad value
    other = write(tmp_path / "other.yaml", "_base_: base.yaml\nmodel: {seg_loss: bce}\ntrain: {amp: bf18}\n")
    with pytest.raises(ConfigError, match=r"other.yaml: key 'train.amp': 'bf18' is not one of auto, off, bf16, fp16$"):
        load_config(other)
    assert (cfg.train.amp, cfg.model.seg_loss) == ("bf16", "structure")


def test_choices_stay_plain_strings_in_memory_and_on_disk(tmp_path):
    cfg = load_config("ms3.yaml", ["train.amp=bf16", "eval.audio=normal,silent"])
    assert type(cfg.train.amp) is str and f"{cfg.train.amp}" == "bf16"
    save_config(cfg, tmp_path / "config.yaml")
    assert "amp: bf16" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="'normal,loud' is not a ','-separated list of normal, shuffle, silent"):
        load_config(None, ["eval.audio=normal,loud"])


def test_stored_configs_and_later_overrides_are_checked():
    stored = config_to_dict(load_config(None))
    stored["eval"]["num_vis"] = -1
    with pytest.raises(ConfigError, match="stored config: key 'eval.num_vis': -1 is out of range"):
        config_from_dict(stored)
    with pytest.raises(ConfigError, match="command-line override 'train.optimizer=lamb': key 'train.optimizer'"):
        apply_overrides(load_config(None), ["train.optimizer=lamb"])


def test_print_config_fails_at_load_time_and_creates_no_run_folder(tmp_path, capsys):
    from avseg.cli.train import main

    with pytest.raises(ConfigError, match="key 'train.batch_size': -1 is out of range"):
        main(["--cfg", "ms3.yaml", "--print-config", "train.batch_size=-1"])
    with pytest.raises(ConfigError, match="key 'data.image_size': 0 is out of range"):
        main(["--cfg", "synthetic/s4_tpavi.yaml", "--out", str(tmp_path / "run"), "data.image_size=0"])
    assert not (tmp_path / "run").exists() and capsys.readouterr().out == ""


def test_schema_choices_match_what_the_code_implements():
    from avseg.audio.io import RESAMPLERS
    from avseg.audio.vggish import AUDIO_ENCODERS
    from avseg.data import AVS_DATASETS
    from avseg.data.avsbench_dataset import AUDIO_SOURCES, AVSS_SUBSETS, DATASET_TASKS, LAYOUTS
    from avseg.data.transforms import FLIP_MODES
    from avseg.engine.run_setup import CPU_ALLOCATOR_MODES
    from avseg.engine.trainer import AMP_MODES, LR_SCHEDULES, OPTIMIZERS
    from avseg.evaluation import AUDIO_MODES
    from avseg.losses.latent import KL_FORMS, MI_FORMS, SHARED_DIVERGENCES
    from avseg.losses.segmentation import SEGMENTATION_LOSSES
    from avseg.models.backbones import BACKBONES
    from avseg.vae.data import BINARIZE_MODES, VAE_DATASETS
    from avseg.vae.losses import LOSS_CONVENTIONS, RECONSTRUCTIONS

    implemented = {
        "data.name": AVS_DATASETS + VAE_DATASETS, "data.task": DATASET_TASKS, "data.layout": LAYOUTS,
        "data.subsets": AVSS_SUBSETS, "data.flip": FLIP_MODES,
        "data.audio_source": AUDIO_SOURCES, "data.resampler": RESAMPLERS, "data.vae.binarize": BINARIZE_MODES,
        "model.backbone.name": BACKBONES, "model.audio.name": AUDIO_ENCODERS, "model.seg_loss": SEGMENTATION_LOSSES,
        "model.ecmvae.shared_divergence": SHARED_DIVERGENCES, "model.ecmvae.kl_form": KL_FORMS,
        "model.ecmvae.mi_form": MI_FORMS, "model.vae.loss": LOSS_CONVENTIONS, "model.vae.recon": RECONSTRUCTIONS,
        "train.optimizer": OPTIMIZERS, "train.lr_schedule": LR_SCHEDULES, "train.amp": AMP_MODES,
        "train.cpu_allocator": CPU_ALLOCATOR_MODES, "eval.audio": AUDIO_MODES,
    }
    declared = {key: rule.values for key, rule in C.SCHEMA_RULES.items() if isinstance(rule, C.Choices)}
    assert declared.keys() == implemented.keys()
    for key, values in implemented.items():
        assert set(declared[key]) == set(values), key


def numeric_keys(schema, prefix=""):
    for spec in dataclasses.fields(schema):
        default = getattr(schema, spec.name)
        if dataclasses.is_dataclass(default):
            yield from numeric_keys(default, f"{prefix}{spec.name}.")
        elif spec.type in ("int", "float", "Optional[int]", "Optional[float]", "List[int]", "List[float]"):
            yield f"{prefix}{spec.name}"


def test_every_numeric_field_has_a_range():
    numeric = list(numeric_keys(C.AvsegConfig()))
    assert {"seed", "train.batch_size", "data.image_size", "model.tpavi_stages", "model.backbone.drop_path_rate"} <= set(numeric)
    assert [key for key in numeric if not isinstance(C.SCHEMA_RULES.get(key), C.Bounds)] == []


def test_config_path_that_is_a_folder_says_so(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; expected a YAML config file"):
        load_config(str(tmp_path))
