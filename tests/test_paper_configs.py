"""The paper configs compute what the releases compute unless an override says otherwise (issue: reproduction)."""
from pathlib import Path

import pytest

from avseg.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER_CONFIGS = sorted(str(p) for p in (CONFIGS / "avsbench").glob("*.yaml")) + ["s4.yaml", "ms3.yaml"]


@pytest.mark.parametrize("name", PAPER_CONFIGS, ids=lambda n: Path(n).name)
def test_paper_config_uses_released_maths(name):
    cfg = load_config(name)
    assert cfg.train.amp == "off", "the releases train in float32 without autocast"
    if cfg.model.name == "ecmvae":
        assert cfg.model.ecmvae.kl_form == "released", "the release reads exp(logvar) as the standard deviation"


def test_departures_are_one_override_away():
    cfg = load_config("ms3.yaml", ["model.ecmvae.kl_form=analytic", "train.amp=bf16"])
    assert (cfg.model.ecmvae.kl_form, cfg.train.amp) == ("analytic", "bf16")


def test_synthetic_and_compare_configs_keep_their_own_choices():
    assert load_config(str(CONFIGS / "compare" / "s4_ecmvae.yaml")).model.ecmvae.kl_form == "analytic"
