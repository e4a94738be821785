"""Latent-space tools: every picture on the tiny stand-in data, the GMM sampler, grids, vectors, morphs."""
import json

import numpy as np
import pytest
import torch

from avseg.checkpoint import save_checkpoint
from avseg.cli.vae_explore import main
from avseg.config import load_config
from avseg.errors import AvsegError, CheckpointError
from avseg.vae import explore
from avseg.models import build_model
from avseg.vae.models import build_vae_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is as fast


def _checkpoint(folder, config, overrides):
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    model = build_vae_model(cfg)
    path = folder / f"{cfg.model.name}.pth"
    save_checkpoint(path, model.state_dict(), cfg)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae_checkpoints")
    return {
        "vae": _checkpoint(folder, "vae/fashion_vae.yaml", ["data.name=digits"]),
        "ae": _checkpoint(folder, "vae/fashion_ae.yaml", ["data.name=digits"]),
        "faces": _checkpoint(folder, "vae/faces_vae.yaml", ["data.name=lfw", "model.vae.latent_dim=16"]),
    }


def _assert_picture(path):
    import matplotlib.image

    assert path.is_file() and path.stat().st_size > 1000
    pixels = matplotlib.image.imread(str(path))
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 50
    assert (pixels[..., :3] < 0.9).mean() > 0.02  # not a blank page (empty axes alone cover ~1%)


@pytest.mark.parametrize(
    "model,arguments,pictures",
    [
        ("vae", ["all", "--attribute", "3"], ["reconstruct", "sample_normal", "scatter", "grid", "morph", "attribute_3"]),
        ("vae", ["sample", "--sampler", "gmm", "--fit-images", "300"], ["sample_gmm"]),
        ("vae", ["arithmetic", "--add", "3", "--subtract", "1", "--num", "4"], ["arithmetic"]),
        ("vae", ["nll", "--samples", "16", "--images", "8", "data.vae.binarize=dynamic"], ["nll"]),
        ("ae", ["all", "--fit-images", "300"], ["reconstruct", "sample_box", "scatter", "grid", "morph"]),
        ("faces", ["all", "--num", "3"], ["reconstruct", "sample_normal", "scatter", "grid", "morph", "attribute_Face"]),
        ("faces", ["arithmetic", "--add", "Face", "--num", "3"], ["arithmetic"]),
    ],
)
def test_every_tool_writes_a_picture_on_the_stand_in_data(checkpoints, tmp_path, model, arguments, pictures):
    status = main(["--checkpoint", str(checkpoints[model]), "--out", str(tmp_path), "--images", "100", "--device", "cpu"] + arguments)
    assert status == 0
    for name in pictures:
        _assert_picture(tmp_path / f"{name}.png")
    if arguments[0] == "nll":
        report = json.loads((tmp_path / "nll.json").read_text())
        assert report["num_samples"] == 16 and report["num_images"] == 8 and report["binarize"] == "dynamic"
        assert 0 < report["nll"] < 64 * 64 * np.log(2) * 2


def test_tools_refuse_unsuitable_models_and_checkpoints(checkpoints, tmp_path):
    with pytest.raises(AvsegError, match="plain autoencoder"):
        main(["nll", "--checkpoint", str(checkpoints["ae"]), "--out", str(tmp_path), "--images", "4"])
    cfg = load_config(None, ["model.name=tpavi"])
    other = tmp_path / "tpavi.pth"
    save_checkpoint(other, {}, cfg)
    with pytest.raises(CheckpointError, match="tpavi"):
        main(["grid", "--checkpoint", str(other)])
    avs = tmp_path / "tpavi_tiny.pth"
    tiny = load_config(None, ["model.name=tpavi", "model.backbone.name=resnet18", "model.backbone.weights=null",
                              "model.audio.name=small", "model.audio.weights=null", "model.neck_channels=16"])
    save_checkpoint(avs, build_model(tiny).state_dict(), tiny)
    with pytest.raises(CheckpointError, match="holds a 'tpavi' model \\(task 'avs'\\)"):
        main(["grid", "--ckpt", str(avs)])
    with pytest.raises(AvsegError, match="not one of the dataset's attributes"):
        main(["attribute", "--attribute", "Smiling", "--checkpoint", str(checkpoints["faces"]), "--out", str(tmp_path), "--images", "40"])


def test_gaussian_mixture_recovers_well_separated_components():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, -3.0]])
    scales = torch.tensor([[1.0, 0.3], [0.5, 0.5], [0.2, 1.0]])
    labels = torch.arange(3).repeat_interleave(torch.tensor([600, 300, 300]))
    codes = centres[labels] + scales[labels] * torch.randn(1200, 2, generator=generator)
    mixture = explore.GaussianMixture(n_components=3, seed=0).fit(codes)
    assert mixture.converged
    order = torch.cdist(centres, mixture.means.float()).argmin(dim=1)
    assert torch.allclose(mixture.means[order].float(), centres, atol=0.15)
    assert torch.allclose(mixture.weights[order].float(), torch.tensor([0.5, 0.25, 0.25]), atol=0.03)
    variances = torch.diagonal(mixture.covariances[order], dim1=1, dim2=2).float()
    assert torch.allclose(variances.sqrt(), scales, rtol=0.15)
    samples = mixture.sample(3000, torch.Generator().manual_seed(1))
    assert samples.shape == (3000, 2) and mixture.log_prob(samples).mean() > mixture.log_prob(samples + 3.0).mean()


def test_decode_grid_codes_are_finite_and_span_the_right_range():
    vae_grid = explore.decode_grid_codes(2, 15, variational=True, quantile=0.01)
    assert torch.isfinite(vae_grid).all() and vae_grid.shape == (225, 2)
    assert vae_grid[:, 0].min().item() == pytest.approx(-2.3263, abs=1e-3) and vae_grid[:, 0].max().item() == pytest.approx(2.3263, abs=1e-3)
    codes = torch.tensor([[-1.0, 2.0], [3.0, 5.0], [0.0, 4.0]])
    ae_grid = explore.decode_grid_codes(2, 5, variational=False, codes=codes)
    assert ae_grid.min(dim=0).values.tolist() == [-1.0, 2.0] and ae_grid.max(dim=0).values.tolist() == [3.0, 5.0]
    assert ae_grid[0].tolist() == [-1.0, 5.0]  # top-left tile: smallest x, largest y


def test_attribute_vectors_morphs_and_samplers():
    codes = torch.tensor([[1.0, 1.0], [3.0, 1.0], [0.0, 5.0], [0.0, 7.0]])
    vector = explore.attribute_vector(codes, torch.tensor([1, 1, 0, 0]))
    expected = torch.tensor([2.0, -5.0]) / torch.tensor([2.0, -5.0]).norm()
    assert torch.allclose(vector, expected)
    with pytest.raises(AvsegError, match="with and without"):
        explore.attribute_vector(codes, torch.ones(4))
    morph = explore.morph_codes(torch.zeros(3), torch.ones(3), steps=11)
    assert torch.equal(morph[0], torch.zeros(3)) and torch.equal(morph[-1], torch.ones(3)) and len(morph) == 11
    assert explore.ATTRIBUTE_STEPS == tuple(range(-4, 5))
    box = explore.BoxSampler(codes).sample(500, torch.Generator().manual_seed(0))
    assert torch.all(box >= codes.min(0).values) and torch.all(box <= codes.max(0).values)


def test_eval_tool_scores_an_image_vae_checkpoint(checkpoints, tmp_path):
    from avseg.cli.eval import main as eval_main
    from avseg.vae.evaluation import VaeEvaluator

    out = tmp_path / "eval"
    assert eval_main(["--ckpt", str(checkpoints["vae"]), "--out", str(out), "device=cpu", "eval.batch_size=64"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert "task" not in report and report["checkpoint"] == str(checkpoints["vae"])
    metrics = report["results"]["vae"]["metrics"]
    assert VaeEvaluator.primary_metric in metrics and np.isfinite(metrics["neg_elbo"])
