"""Image AE/VAE baselines: exact parameter counts, loss conventions, KL, IWAE, data readers, training."""
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avseg.config import load_config
from avseg.errors import ConfigError, DatasetError
from avseg.vae.data import FASHION_MNIST_DEBIAN_ROOT, build_vae_dataset, find_fashion_mnist, image_shape, read_idx
from avseg.vae.explore import importance_weighted_log_likelihood
from avseg.vae.losses import LossSettings, book_to_elbo, kl_to_standard_normal
from avseg.vae.models import ConvAutoencoder, FacesVAE, FashionVAE, NarrowConv2d, SumBiasConvTranspose2d, build_vae_model

FASHION_PRESENT = Path(FASHION_MNIST_DEBIAN_ROOT, "t10k-images-idx3-ubyte.gz").is_file()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is as fast


def _counts(module):
    """Parameter count of every conv/dense layer, in order."""
    return [sum(p.numel() for p in layer.parameters()) for layer in module.modules() if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]


def test_conv_autoencoder_has_the_books_exact_parameter_counts():
    model = ConvAutoencoder()
    assert _counts(model.encoder) == [320, 18_496, 73_856, 4_098]
    assert _counts(model.decoder) == [6_144, 147_584, 73_792, 18_464, 289]
    assert sum(p.numel() for p in model.encoder.parameters()) == 96_770
    assert sum(p.numel() for p in model.decoder.parameters()) == 246_273
    assert not model.variational and model.latent_dim == 2


def test_fashion_vae_adds_a_log_variance_head_and_returns_every_term():
    model = FashionVAE()
    assert _counts(model.encoder) == [320, 18_496, 73_856, 4_098, 4_098]
    images = torch.rand(3, 1, 32, 32)
    out = model(images)
    assert out["reconstructions"].shape == images.shape and out["z_log_var"].shape == (3, 2)
    assert {"reconstruction_loss", "kl_loss", "loss"} <= set(out)
    assert torch.allclose(out["loss"], out["reconstruction_loss"] + out["kl_loss"])
    assert FashionVAE.batch_keys == ("images",)


def test_faces_vae_is_the_book_era_five_block_network():
    model = FacesVAE(latent_dim=200)
    leaky = [m for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(leaky) == 11 and all(m.negative_slope == 0.3 for m in leaky)  # 5 encoder + dense + 5 decoder
    assert len(norms) == 11 and all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)
    out = model(torch.rand(2, 3, 64, 64))
    assert out["reconstructions"].shape == (2, 3, 64, 64) and out["z"].shape == (2, 200)
    assert model.decoder.project[0].out_features == 64 * 2 * 2


@pytest.mark.parametrize("out_channels,kernel", [(1, 3), (3, 5)])
def test_narrow_conv_equals_the_ordinary_convolution_with_gradients(out_channels, kernel):
    layer = NarrowConv2d(6, out_channels, kernel, stride=1, padding=kernel // 2).double()
    images = torch.randn(2, 6, 9, 7, dtype=torch.float64, requires_grad=True)
    reference_images = images.detach().clone().requires_grad_(True)
    output = layer(images)
    reference = torch.nn.functional.conv2d(reference_images, layer.weight, layer.bias, padding=kernel // 2)
    assert torch.allclose(output, reference, atol=1e-12)
    grad = torch.randn_like(output)
    output.backward(grad)
    weight_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    reference.backward(grad)
    assert torch.allclose(images.grad, reference_images.grad, atol=1e-12)
    assert torch.allclose(weight_grad, layer.weight.grad, atol=1e-12)


def _output_and_grads(layer, images, grad, **kwargs):
    images = images.detach().clone().requires_grad_(True)
    output = layer(images, **kwargs)
    grads = torch.autograd.grad(output, [images, layer.weight, layer.bias], grad)
    return output, grads


def test_sum_bias_transposed_conv_equals_the_ordinary_one_with_gradients():
    layer = SumBiasConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1).double()
    reference = torch.nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1).double()
    reference.load_state_dict(layer.state_dict())
    images = torch.randn(3, 6, 5, 4, dtype=torch.float64)
    grad = torch.randn(3, 4, 10, 8, dtype=torch.float64)
    output, grads = _output_and_grads(layer, images, grad)
    expected, expected_grads = _output_and_grads(reference, images, grad)
    assert torch.allclose(output, expected, atol=1e-12)
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(grads[2], grad.sum(dim=(0, 2, 3)))
    # an explicit output_size takes the ordinary module's path
    sized, _ = _output_and_grads(layer, images, torch.randn(3, 4, 9, 7, dtype=torch.float64), output_size=(9, 7))
    assert sized.shape == (3, 4, 9, 7)


def test_sum_bias_transposed_conv_casts_like_autocast():
    layer = SumBiasConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
    reference = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
    reference.load_state_dict(layer.state_dict())
    images = torch.randn(2, 4, 6, 6)
    grad = torch.randn(2, 2, 12, 12, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, grads = _output_and_grads(layer, images, grad)
        expected, expected_grads = _output_and_grads(reference, images, grad)
    assert output.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(output, expected)
    for got, want in zip(grads, expected_grads):
        assert got.dtype == want.dtype == torch.float32
        assert torch.allclose(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_analytic_kl_matches_a_monte_carlo_estimate():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    log_var = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    std = torch.exp(0.5 * log_var)
    z = mean + std * torch.randn(200_000, 4, 3, generator=generator, dtype=torch.float64)
    log_q = (-0.5 * (((z - mean) / std) ** 2 + log_var + math.log(2 * math.pi))).sum(-1)
    log_p = (-0.5 * (z**2 + math.log(2 * math.pi))).sum(-1)
    samples = log_q - log_p
    estimate, stderr = samples.mean(0), samples.std(0) / math.sqrt(len(samples))
    analytic = kl_to_standard_normal(mean, log_var)
    assert torch.all((estimate - analytic).abs() < 4 * stderr + 1e-6)


def test_book_loss_is_beta_times_mean_bce_plus_summed_kl_and_maps_to_elbo():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 1, 8, 8, generator=generator, dtype=torch.float64)
    images = torch.rand(5, 1, 8, 8, generator=generator, dtype=torch.float64)
    mean, log_var = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    p = torch.sigmoid(logits)
    bce = -(images * torch.log(p) + (1 - images) * torch.log(1 - p))
    kl = (-0.5 * (1 + log_var - mean**2 - log_var.exp())).sum(1)
    book = LossSettings("book", "bce", beta=500.0)(logits, images, mean, log_var)
    assert torch.allclose(book["reconstruction_loss"], 500 * bce.mean(dim=(1, 2, 3)).mean())
    assert torch.allclose(book["loss"], book["reconstruction_loss"] + kl.mean())
    mapping = book_to_elbo("bce", 500.0, 64)
    elbo = LossSettings("elbo", "bce", kl_weight=mapping["kl_weight"])(logits, images, mean, log_var)
    assert torch.allclose(elbo["reconstruction_loss"], bce.sum(dim=(1, 2, 3)).mean())
    assert torch.allclose(book["loss"], mapping["scale"] * elbo["loss"])
    # mse: the book loss is a Gaussian ELBO with variance D / (2 beta), less its normaliser
    mse_mapping = book_to_elbo("mse", 2000.0, 64)
    book_mse = LossSettings("book", "mse", beta=2000.0)(logits, images, mean, log_var)
    elbo_mse = LossSettings("elbo", "mse", gaussian_variance=mse_mapping["gaussian_variance"])(logits, images, mean, log_var)
    normaliser = 0.5 * 64 * math.log(2 * math.pi * mse_mapping["gaussian_variance"])
    assert torch.allclose(book_mse["loss"], elbo_mse["loss"] - normaliser)


def test_bad_loss_settings_name_the_key():
    with pytest.raises(ConfigError, match="model.vae.loss"):
        LossSettings("keras", "bce")
    with pytest.raises(ConfigError, match="model.vae.recon"):
        LossSettings("book", "l1")


def _briefly_trained_vae(steps=20):
    """The Fashion VAE's layout at 8x8 (8/16/32 filters, 4-D latent), briefly trained on the raw 8x8 digits."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images / 16.0).float()[:, None]
    model = FashionVAE(image_size=8, latent_dim=4, channels=(8, 16, 32))
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for step in range(steps):
        loss = model(images[step * 64 : (step + 1) * 64])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), images[-64:]


def test_importance_weighted_bound_rises_with_k_and_starts_at_the_elbo():
    model, images = _briefly_trained_vae()
    targets = torch.bernoulli(images, generator=torch.Generator().manual_seed(0))
    bounds = {}
    for k in (1, 10, 100, 1000):
        bound = importance_weighted_log_likelihood(model, targets, k, generator=torch.Generator().manual_seed(k))
        assert bound.dtype == torch.float64 and torch.isfinite(bound).all()
        bounds[k] = bound.mean().item()
    noise = 0.05  # Monte Carlo noise of a mean over 64 images; the expected bound is non-decreasing in K
    assert bounds[1] < bounds[10] <= bounds[100] + noise and bounds[100] <= bounds[1000] + noise
    assert bounds[1000] - bounds[1] > 0.5
    # L_1 is an unbiased single-sample ELBO: compare with -(BCE + KL) averaged over many draws
    with torch.no_grad():
        z_mean, z_log_var = model.encode(targets)
        draws = [model.log_likelihood(model.decode_logits(model.reparameterize(z_mean, z_log_var)), targets) for _ in range(100)]
        elbo = (torch.stack(draws).mean(0) - kl_to_standard_normal(z_mean, z_log_var).double()).mean().item()
    assert abs(bounds[1] - elbo) < 0.05 * abs(elbo)


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_and_fashion_layouts(tmp_path, compress):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for prefix, count in (("train", 6), ("t10k", 4)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.randint(1, 256, (count, 28, 28)), compress)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10, compress)
    assert find_fashion_mnist(tmp_path) == raw
    suffix = ".gz" if compress else ""
    assert read_idx(raw / f"t10k-images-idx3-ubyte{suffix}").shape == (4, 28, 28)
    cfg = load_config("vae/fashion_vae.yaml", [f"data.root={tmp_path}"])
    test_set = build_vae_dataset(cfg, "test")
    item = test_set[1]
    assert len(test_set) == 4 and item["images"].shape == (1, 32, 32) and item["labels"].item() == 1
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(item["images"][0][border] == 0) and torch.all(item["images"][0][~border] > 0)
    val_cfg = load_config("vae/fashion_vae.yaml", [f"data.root={tmp_path}", "data.vae.val_fraction=0.5"])
    assert len(build_vae_dataset(val_cfg, "train")) == 3 and len(build_vae_dataset(val_cfg, "val")) == 3


def test_missing_or_corrupt_fashion_files_give_clear_errors(tmp_path):
    cfg = load_config("vae/fashion_vae.yaml", [f"data.root={tmp_path}"])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte"):
        build_vae_dataset(cfg, "test")
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(bad)


def _fake_celeba(root: Path, csv: bool) -> None:
    from PIL import Image

    folder = root / "img_align_celeba"
    folder.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 7)]
    for i, name in enumerate(names):
        Image.fromarray(np.full((218, 178, 3), 40 * i, np.uint8)).save(folder / name)
    if csv:
        rows = ["image_id,Smiling,Male"] + [f"{n},{1 if i % 2 else -1},-1" for i, n in enumerate(names)]
        (root / "list_attr_celeba.csv").write_text("\n".join(rows) + "\n")
        (root / "list_eval_partition.csv").write_text("image_id,partition\n" + "".join(f"{n},{0 if i < 4 else 1}\n" for i, n in enumerate(names)))
    else:
        rows = [str(len(names)), "Smiling Male"] + [f"{n} {1 if i % 2 else -1} -1" for i, n in enumerate(names)]
        (root / "list_attr_celeba.txt").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("csv", [True, False])
def test_celeba_folder_reads_both_attribute_formats_and_squashes_to_64(tmp_path, csv):
    _fake_celeba(tmp_path, csv)
    split = "train" if csv else "all"
    cfg = load_config("vae/faces_vae.yaml", [f"data.root={tmp_path}"])
    dataset = build_vae_dataset(cfg, split)
    assert len(dataset) == (4 if csv else 6) and dataset.attribute_names == ["Smiling", "Male"]
    item = dataset[1]
    assert item["images"].shape == (3, 64, 64) and item["labels"].tolist() == [1, 0]
    assert image_shape(cfg) == (3, 64, 64)
    if not csv:
        with pytest.raises(DatasetError, match="list_eval_partition"):
            build_vae_dataset(cfg, "val")


def test_celeba_without_images_names_the_folder(tmp_path):
    cfg = load_config("vae/faces_vae.yaml", [f"data.root={tmp_path}"])
    with pytest.raises(DatasetError, match="img_align_celeba"):
        build_vae_dataset(cfg, "train")


def test_dynamic_binarisation_is_fresh_in_training_and_fixed_for_evaluation():
    cfg = load_config("vae/fashion_vae_elbo32.yaml", ["data.name=digits"])
    train_set, test_set = build_vae_dataset(cfg, "train", train=True), build_vae_dataset(cfg, "test")
    first, second = train_set[0]["images"], train_set[0]["images"]
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    assert torch.equal(test_set[3]["images"], build_vae_dataset(cfg, "test")[3]["images"])


@pytest.mark.skipif(not FASHION_PRESENT, reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DEBIAN_ROOT}")
def test_book_reconstruction_loss_stays_above_the_target_entropy_floor():
    cfg = load_config("vae/fashion_vae.yaml")
    test_set = build_vae_dataset(cfg, "test")
    pixels = test_set.images.double() / 255.0
    entropy = -(torch.special.xlogy(pixels, pixels) + torch.special.xlogy(1 - pixels, 1 - pixels))
    assert 500 * entropy.mean().item() == pytest.approx(92.7, abs=0.05)  # the floor over the padded test set
    subset = pixels[:256].float()
    floor = 500 * entropy[:256].mean().item()
    model = build_vae_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), 5e-4)
    for _ in range(3):
        out = model(subset[:128])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        reconstruction = model.eval()(subset)["reconstruction_loss"].item()
    assert floor < reconstruction < 500 * math.log(2) + 1


@pytest.mark.parametrize(
    "config,overrides",
    [
        ("vae/fashion_ae.yaml", ["data.name=digits"]),
        ("vae/fashion_vae_elbo32.yaml", ["data.name=digits", "model.vae.iwae_images=4", "model.vae.iwae_samples=8"]),
        ("vae/faces_vae.yaml", ["data.name=lfw", "model.vae.latent_dim=16", "data.num_workers=0", "train.batch_size=16"]),
    ],
)
def test_book_models_train_through_the_shared_trainer(tmp_path, config, overrides):
    from avseg.engine.trainer import train

    cfg = load_config(config, overrides + ["train.epochs=1", "train.max_steps_per_epoch=2", "train.progress=false", "train.tensorboard=false", "device=cpu"])
    train(cfg, out=str(tmp_path))
    assert (tmp_path / "last.pth").is_file() and (tmp_path / "best.pth").is_file()
    log = (tmp_path / "log.txt").read_text()
    assert "val" in log and "loss" in log
    if "iwae_images=4" in overrides:
        assert "iwae_nll" in log


def test_losses_stay_float32_under_cpu_bf16_autocast():
    """train.amp=bf16 on CPU: the networks run in bf16, the summed losses in float32, close to float32 training."""
    torch.manual_seed(0)
    model = FashionVAE(loss=LossSettings(loss="elbo", recon="bce", kl_weight=1.0))
    images = torch.rand(4, 1, 32, 32)
    torch.manual_seed(1)
    reference = model(images)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(images)
    for key in ("loss", "reconstruction_loss", "kl_loss"):
        assert mixed[key].dtype == torch.float32
        assert torch.allclose(mixed[key], reference[key], rtol=0.03), key
