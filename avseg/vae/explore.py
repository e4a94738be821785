"""Latent-space tools for the image autoencoders/VAEs (book chapter 3, plus pythae's GMM sampler and NLL).

Every picture tool writes one PNG (atomically) and returns its path. Codes are ``z_mean`` (the
autoencoder's embedding) unless a function says otherwise: the book takes sampled codes for its
scatter plots and attribute vectors; we keep sampled codes for the scatter (its ``norm.cdf`` view asks
whether the aggregate posterior looks like N(0, I)) and use ``z_mean`` for attribute vectors, which
removes the sampling noise from the means.

* :func:`reconstruction_grid` — originals above reconstructions.
* :class:`NormalSampler`, :class:`BoxSampler`, :class:`GaussianMixture` + :func:`sample_grid` — decoded
  samples from N(0, I) (VAE), uniformly inside the embeddings' bounding box (autoencoder, as the book)
  or from a 10-component full-covariance Gaussian mixture fitted on training codes (pythae's
  ``GaussianMixtureSampler``; EM written here in float64 torch, no scikit-learn needed).
* :func:`latent_scatter` — codes coloured by label, and for a VAE beside them ``norm.cdf(z)``.
* :func:`decode_grid` — a regular grid of decoded codes over the first two latent dimensions
  (others 0): the embeddings' bounding box (autoencoder) or ``norm.ppf`` of ``linspace(q, 1 - q)``
  (VAE; ``q = 0.01`` keeps the border finite where the book decodes ppf(0) = -inf).
* :func:`attribute_vector` + :func:`attribute_grid` — mean code with an attribute minus without, unit
  length, added at k in -4..4; :func:`latent_arithmetic` adds and subtracts several such vectors.
* :func:`morph_grid` — decodes (1 - t) z_a + t z_b for t in [0, 1], both ends included.
* :func:`importance_weighted_log_likelihood` / :func:`importance_weighted_nll` — the IWAE bound
  (Burda et al. 2015) with K samples from q(z|x) (5000 by default), per-image logsumexp in float64.
  It is an NLL in nats only for a proper likelihood: binary targets with a Bernoulli decoder (state the
  binarisation: ``data.vae.binarize`` dynamic = one fixed seeded Bernoulli draw of the test images).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from avseg.errors import AvsegError
from avseg.fileio import atomic_path
from avseg.vae.models import ImageAutoencoder

LOG_2PI = math.log(2.0 * math.pi)
ATTRIBUTE_STEPS = tuple(range(-4, 5))


def _unwrap(model) -> ImageAutoencoder:
    return getattr(model, "module", model)


def _device(model) -> torch.device:
    return next(_unwrap(model).parameters()).device


def _require_variational(model, what: str) -> None:
    if not _unwrap(model).variational:
        raise AvsegError(f"{what} needs a VAE (z_mean and z_log_var heads); this model is a plain autoencoder")


# ----------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure, path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(figure)
    return path


def _to_numpy_image(image: torch.Tensor) -> np.ndarray:
    array = image.detach().float().clamp(0, 1).cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def save_image_rows(rows: Sequence[torch.Tensor], path, row_labels: Optional[Sequence[str]] = None, column_labels: Optional[Sequence[str]] = None) -> Path:
    """Save rows of images (each ``[N, C, H, W]`` in [0, 1]) as one PNG mosaic with 2-pixel white gaps."""
    plt = _pyplot()
    channels, height, width = rows[0].shape[1:]
    num_rows, num_cols, gap = len(rows), max(len(row) for row in rows), 2
    mosaic = np.ones((num_rows * (height + gap) - gap, num_cols * (width + gap) - gap, 3), dtype=np.float32)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            tile = _to_numpy_image(image)
            top, left = r * (height + gap), c * (width + gap)
            mosaic[top : top + height, left : left + width] = tile[..., None] if tile.ndim == 2 else tile
    scale = max(1.0, 48.0 / max(height, width))
    figure = plt.figure(figsize=(mosaic.shape[1] * scale / 100 + 0.2, mosaic.shape[0] * scale / 100 + 0.3))
    axis = figure.add_axes((0, 0, 1, 1))
    axis.imshow(mosaic, interpolation="nearest")
    axis.axis("off")
    for r, label in enumerate(row_labels or []):
        axis.text(-2, r * (height + gap) + height / 2, label, fontsize=7, ha="right", va="center")
    for c, label in enumerate(column_labels or []):
        axis.text(c * (width + gap) + width / 2, -1, label, fontsize=6, ha="center", va="bottom")
    return _save_figure(figure, path)


# ----------------------------------------------------------------------------- codes
@torch.no_grad()
def encode_images(model, images: torch.Tensor, sampled: bool = False, batch_size: int = 500) -> torch.Tensor:
    """Codes of ``images [N, C, H, W]``: ``z_mean`` or, with ``sampled``, a draw from q(z|x): ``[N, d]``."""
    model = _unwrap(model)
    model.eval()
    device = _device(model)
    codes = []
    for start in range(0, len(images), batch_size):
        z_mean, z_log_var = model.encode(images[start : start + batch_size].to(device))
        codes.append(model.reparameterize(z_mean, z_log_var) if sampled and z_log_var is not None else z_mean)
    return torch.cat(codes).cpu()


def collect_images(loader: Iterable, max_images: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack ``images`` and ``labels`` of a loader's batches (the first ``max_images``)."""
    images, labels, count = [], [], 0
    for batch in loader:
        images.append(batch["images"])
        labels.append(batch["labels"])
        count += len(batch["images"])
        if max_images and count >= max_images:
            break
    if not images:
        raise AvsegError("the dataset is empty")
    images, labels = torch.cat(images), torch.cat(labels)
    return (images[:max_images], labels[:max_images]) if max_images else (images, labels)


@torch.no_grad()
def decode_codes(model, codes: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Images in [0, 1] for codes ``[N, d]``: ``[N, C, H, W]`` (model in eval mode)."""
    model = _unwrap(model)
    model.eval()
    device = _device(model)
    return torch.cat([model.decode(codes[start : start + batch_size].to(device)).cpu() for start in range(0, len(codes), batch_size)])


# ----------------------------------------------------------------------------- samplers
class NormalSampler:
    """Codes from the VAE prior N(0, I)."""

    def __init__(self, latent_dim: int):
        self.latent_dim = latent_dim

    def sample(self, num: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randn(num, self.latent_dim, generator=generator)


class BoxSampler:
    """Codes uniform inside the bounding box of given codes (the book's autoencoder sampling)."""

    def __init__(self, codes: torch.Tensor):
        self.low, self.high = codes.min(dim=0).values, codes.max(dim=0).values

    def sample(self, num: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.rand(num, len(self.low), generator=generator)


class GaussianMixture:
    """Full-covariance Gaussian mixture fitted by EM in float64 (k-means++ start, like scikit-learn's defaults).

    ``fit(codes [N, d])`` then ``sample(num)``; ``reg_covar`` is added to every covariance diagonal.
    """

    def __init__(self, n_components: int = 10, max_iter: int = 500, tol: float = 1e-3, reg_covar: float = 1e-6, seed: int = 0):
        self.n_components, self.max_iter, self.tol, self.reg_covar, self.seed = n_components, max_iter, tol, reg_covar, seed
        self.weights = self.means = self.covariances = None
        self.converged = False
        self.lower_bound = -math.inf

    def _initial_labels(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        centers = x[torch.randint(len(x), (1,), generator=generator)]
        for _ in range(1, self.n_components):
            distance = torch.cdist(x, centers).min(dim=1).values.pow(2)
            probabilities = distance / distance.sum() if distance.sum() > 0 else torch.full_like(distance, 1.0 / len(x))
            centers = torch.cat([centers, x[torch.multinomial(probabilities, 1, generator=generator)]])
        for _ in range(10):
            labels = torch.cdist(x, centers).argmin(dim=1)
            for k in range(self.n_components):
                if (labels == k).any():
                    centers[k] = x[labels == k].mean(dim=0)
        return torch.cdist(x, centers).argmin(dim=1)

    def _m_step(self, x: torch.Tensor, responsibilities: torch.Tensor) -> None:
        counts = responsibilities.sum(dim=0) + 10 * torch.finfo(x.dtype).eps
        self.weights = counts / len(x)
        self.means = responsibilities.T @ x / counts[:, None]
        centred = x[None] - self.means[:, None]
        covariances = torch.einsum("kn,kni,knj->kij", responsibilities.T, centred, centred) / counts[:, None, None]
        self.covariances = covariances + self.reg_covar * torch.eye(x.shape[1], dtype=x.dtype)

    def _weighted_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        cholesky = torch.linalg.cholesky(self.covariances)
        centred = (x[None] - self.means[:, None]).transpose(1, 2)
        solved = torch.linalg.solve_triangular(cholesky, centred, upper=False)
        mahalanobis = solved.pow(2).sum(dim=1)
        log_det = 2.0 * torch.log(torch.diagonal(cholesky, dim1=1, dim2=2)).sum(dim=1)
        log_normal = -0.5 * (x.shape[1] * LOG_2PI + log_det[:, None] + mahalanobis)
        return (log_normal + torch.log(self.weights)[:, None]).T

    def fit(self, codes: torch.Tensor) -> "GaussianMixture":
        x = codes.detach().double().cpu()
        if len(x) < self.n_components:
            raise AvsegError(f"a {self.n_components}-component mixture needs at least {self.n_components} codes, got {len(x)}")
        generator = torch.Generator().manual_seed(self.seed)
        labels = self._initial_labels(x, generator)
        self._m_step(x, torch.nn.functional.one_hot(labels, self.n_components).double())
        for _ in range(self.max_iter):
            log_prob = self._weighted_log_prob(x)
            lower_bound = torch.logsumexp(log_prob, dim=1).mean().item()
            self._m_step(x, torch.softmax(log_prob, dim=1))
            if abs(lower_bound - self.lower_bound) < self.tol:
                self.converged = True
                self.lower_bound = lower_bound
                break
            self.lower_bound = lower_bound
        return self

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """Mixture log-density of codes ``[N, d]``: ``[N]`` float64."""
        return torch.logsumexp(self._weighted_log_prob(codes.double()), dim=1)

    def sample(self, num: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        components = torch.multinomial(self.weights, num, replacement=True, generator=generator)
        noise = torch.randn(num, self.means.shape[1], generator=generator, dtype=torch.float64)
        cholesky = torch.linalg.cholesky(self.covariances)[components]
        return (self.means[components] + (cholesky @ noise[:, :, None])[:, :, 0]).float()


# ----------------------------------------------------------------------------- picture tools
@torch.no_grad()
def reconstruction_grid(model, images: torch.Tensor, path) -> Path:
    """Originals (top row) and reconstructions decoded from ``z_mean`` (bottom row)."""
    reconstructions = decode_codes(model, encode_images(model, images))
    return save_image_rows([images, reconstructions], path, row_labels=["original", "reconstruction"])


def sample_grid(model, sampler, path, num: int = 30, seed: int = 0, columns: int = 10) -> Path:
    """Decode ``num`` codes drawn from ``sampler`` (``.sample(num, generator)``) into a grid."""
    codes = sampler.sample(num, torch.Generator().manual_seed(seed))
    images = decode_codes(model, codes)
    return save_image_rows([images[start : start + columns] for start in range(0, num, columns)], path)


def latent_scatter(codes: torch.Tensor, labels: torch.Tensor, path, label_names: Optional[Sequence[str]] = None, variational: bool = True, title: str = "") -> Path:
    """Scatter of the first two code dimensions coloured by label; a VAE adds the ``norm.cdf(z)`` view."""
    plt = _pyplot()
    codes = codes.detach().double().cpu()
    if codes.shape[1] == 1:
        codes = torch.cat([codes, torch.zeros_like(codes)], dim=1)
    labels = labels.detach().cpu().numpy()
    panels = [("z", codes)] + ([("norm.cdf(z)", torch.special.ndtr(codes))] if variational else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for axis, (name, values) in zip(axes[0], panels):
        points = axis.scatter(values[:, 0].numpy(), values[:, 1].numpy(), c=labels, cmap="rainbow", s=3, alpha=0.8)
        axis.set_xlabel(f"{name}[0]")
        axis.set_ylabel(f"{name}[1]")
        axis.set_title(f"{title} {name}".strip())
    colour_bar = figure.colorbar(points, ax=list(axes[0]))
    if label_names and len(np.unique(labels)) <= len(label_names):
        colour_bar.set_ticks(range(len(label_names)))
        colour_bar.set_ticklabels(label_names)
    return _save_figure(figure, path)


def decode_grid_codes(latent_dim: int, size: int, variational: bool, codes: Optional[torch.Tensor] = None, quantile: float = 0.01) -> torch.Tensor:
    """``[size * size, latent_dim]`` grid codes over the first two dimensions (others 0), rows top to bottom.

    Autoencoder: ``codes``' bounding box. VAE: ``norm.ppf(linspace(quantile, 1 - quantile, size))`` (finite).
    """
    if variational:
        if not 0.0 < quantile < 0.5:
            raise AvsegError(f"decode grid quantile must be in (0, 0.5), got {quantile}")
        axis = torch.special.ndtri(torch.linspace(quantile, 1.0 - quantile, size, dtype=torch.float64)).float()
        x_axis, y_axis = axis, axis
    else:
        if codes is None:
            raise AvsegError("an autoencoder's decode grid needs the embeddings (their bounding box sets its range)")
        low, high = codes.min(dim=0).values, codes.max(dim=0).values
        x_axis = torch.linspace(low[0].item(), high[0].item(), size)
        y_axis = torch.linspace(low[1].item(), high[1].item(), size) if latent_dim > 1 else torch.zeros(size)
    grid = torch.zeros(size, size, latent_dim)
    grid[..., 0] = x_axis[None, :]
    if latent_dim > 1:
        grid[..., 1] = y_axis.flip(0)[:, None]
    return grid.reshape(size * size, latent_dim)


def decode_grid(model, path, size: int = 15, codes: Optional[torch.Tensor] = None, quantile: float = 0.01) -> Path:
    """Decode :func:`decode_grid_codes` into a ``size`` x ``size`` picture."""
    model = _unwrap(model)
    grid = decode_grid_codes(model.latent_dim, size, model.variational, codes, quantile)
    images = decode_codes(model, grid)
    return save_image_rows([images[row * size : (row + 1) * size] for row in range(size)], path)


def attribute_vector(codes: torch.Tensor, has_attribute: torch.Tensor) -> torch.Tensor:
    """Unit-length ``mean(codes | attribute) - mean(codes | not attribute)``: ``[d]``."""
    has_attribute = has_attribute.bool().cpu()
    positives, negatives = int(has_attribute.sum()), int((~has_attribute).sum())
    if positives == 0 or negatives == 0:
        raise AvsegError(f"an attribute vector needs images with and without the attribute ({positives} with, {negatives} without)")
    difference = codes[has_attribute].double().mean(dim=0) - codes[~has_attribute].double().mean(dim=0)
    norm = difference.norm()
    if norm == 0:
        raise AvsegError("the attribute vector is zero (both groups have the same mean code)")
    return (difference / norm).float()


def attribute_grid(model, images: torch.Tensor, vector: torch.Tensor, path, steps: Sequence[float] = ATTRIBUTE_STEPS) -> Path:
    """One row per image: the original, then decode(z + k * vector) for each k in ``steps``."""
    codes = encode_images(model, images)
    rows = []
    for image, code in zip(images, codes):
        shifted = torch.stack([code + k * vector for k in steps])
        rows.append(torch.cat([image[None], decode_codes(model, shifted)]))
    return save_image_rows(rows, path, column_labels=["original"] + [f"k={k:g}" for k in steps])


def latent_arithmetic(model, images: torch.Tensor, terms: Sequence[Tuple[str, float, torch.Tensor]], path) -> Path:
    """One row per image: original, reconstruction, and decode(z + sum(weight * vector)) over ``terms``."""
    if not terms:
        raise AvsegError("latent arithmetic needs at least one attribute vector to add or subtract")
    codes = encode_images(model, images)
    shift = sum(weight * vector for _, weight, vector in terms)
    label = " ".join(f"{'+' if weight >= 0 else '-'}{abs(weight):g}*{name}" for name, weight, _ in terms)
    rows = [images, decode_codes(model, codes), decode_codes(model, codes + shift)]
    return save_image_rows(rows, path, row_labels=["original", "reconstruction", f"z {label}"])


def morph_codes(code_a: torch.Tensor, code_b: torch.Tensor, steps: int = 11) -> torch.Tensor:
    """``(1 - t) z_a + t z_b`` for ``t = linspace(0, 1, steps)`` (both ends included): ``[steps, d]``."""
    if steps < 2:
        raise AvsegError(f"morphing needs at least 2 steps, got {steps}")
    t = torch.linspace(0.0, 1.0, steps)[:, None]
    return (1.0 - t) * code_a[None] + t * code_b[None]


def morph_grid(model, image_a: torch.Tensor, image_b: torch.Tensor, path, steps: int = 11) -> Path:
    """The two originals flanking the decoded morph between their codes."""
    codes = encode_images(model, torch.stack([image_a, image_b]))
    morphs = decode_codes(model, morph_codes(codes[0], codes[1], steps))
    row = torch.cat([image_a[None], morphs, image_b[None]])
    labels = ["A"] + [f"t={t:.2f}" for t in torch.linspace(0, 1, steps).tolist()] + ["B"]
    return save_image_rows([row], path, column_labels=labels)


# ----------------------------------------------------------------------------- likelihood
@torch.no_grad()
def importance_weighted_log_likelihood(
    model,
    images: torch.Tensor,
    num_samples: int = 5000,
    targets: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    max_decoder_batch: int = 4096,
) -> torch.Tensor:
    """IWAE lower bound on log p(x) per image, in nats (float64): ``[B, C, H, W] -> [B]``.

    L_K = logsumexp_k(log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K with z_k ~ q(z|x); L_1 is an
    ELBO sample and L_K rises towards log p(x) as K grows. ``targets`` (default ``images``) are the x of
    p(x|z), so a grey-level encoder input can be scored against a binarised target. ``generator``
    must live on the model's device.
    """
    model = _unwrap(model)
    _require_variational(model, "the importance-weighted bound")
    if num_samples < 1:
        raise AvsegError(f"the importance-weighted bound needs num_samples >= 1, got {num_samples}")
    device = _device(model)
    images = images.to(device)
    targets = images if targets is None else targets.to(device)
    z_mean, z_log_var = (t.double() for t in model.encode(images))
    std = torch.exp(0.5 * z_log_var)
    batch, latent_dim = z_mean.shape
    chunk = max(1, max_decoder_batch // batch)
    log_weights = []
    for start in range(0, num_samples, chunk):
        count = min(chunk, num_samples - start)
        noise = torch.randn(count, batch, latent_dim, generator=generator, device=device, dtype=torch.float64)
        z = z_mean + std * noise
        log_q = -0.5 * (noise.pow(2) + z_log_var + LOG_2PI).sum(dim=2)
        log_prior = -0.5 * (z.pow(2) + LOG_2PI).sum(dim=2)
        logits = model.decode_logits(z.reshape(count * batch, latent_dim).float())
        repeated = targets.unsqueeze(0).expand(count, *targets.shape).reshape(count * batch, *targets.shape[1:])
        log_likelihood = model.log_likelihood(logits, repeated).view(count, batch)
        log_weights.append(log_likelihood + log_prior - log_q)
    return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(num_samples)


@torch.no_grad()
def importance_weighted_nll(model, loader: Iterable, num_samples: int = 5000, max_images: Optional[int] = None, seed: int = 0) -> Dict[str, object]:
    """Mean IWAE NLL bound (nats per image) over a loader's ``images``; also the per-image values.

    Returns ``nll`` (mean of -L_K), ``nll_stderr``, ``num_images``, ``num_samples`` and ``per_image`` (a
    float64 tensor). Deterministic for a given ``seed``.
    """
    model = _unwrap(model)
    model.eval()
    device = _device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    values, seen = [], 0
    for batch in loader:
        images = batch["images"]
        if max_images:
            images = images[: max_images - seen]
        if len(images) == 0:
            break
        values.append(-importance_weighted_log_likelihood(model, images, num_samples, generator=generator).cpu())
        seen += len(images)
        if max_images and seen >= max_images:
            break
    if not values:
        raise AvsegError("the importance-weighted NLL needs at least one image")
    per_image = torch.cat(values)
    stderr = per_image.std().item() / math.sqrt(len(per_image)) if len(per_image) > 1 else float("nan")
    return {"nll": per_image.mean().item(), "nll_stderr": stderr, "num_images": len(per_image), "num_samples": num_samples, "per_image": per_image}


def nll_histogram(per_image: torch.Tensor, path, title: str = "") -> Path:
    """Histogram of per-image NLL bounds (nats)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist(per_image.numpy(), bins=50)
    axis.set_xlabel("NLL bound per image (nats)")
    axis.set_ylabel("images")
    axis.set_title(title)
    return _save_figure(figure, path)


def matching_labels(labels: torch.Tensor, dataset, attribute: Optional[str]) -> Tuple[torch.Tensor, str]:
    """0/1 mask of images that have ``attribute`` (an attribute name, or a class name/index): ``[N]``.

    Without ``attribute``: the first attribute of an attribute dataset (e.g. lfw's ``Face``).
    """
    attribute_names: Optional[List[str]] = getattr(dataset, "attribute_names", None)
    class_names: Optional[List[str]] = getattr(dataset, "class_names", None)
    if attribute_names:
        name = attribute or attribute_names[0]
        if name not in attribute_names:
            raise AvsegError(f"attribute '{name}' is not one of the dataset's attributes: {', '.join(attribute_names)}")
        if labels.dim() != 2 or labels.shape[1] != len(attribute_names):
            raise AvsegError("this dataset has no attribute labels (CelebA needs list_attr_celeba.txt or .csv beside the images)")
        return labels[:, attribute_names.index(name)].bool(), name
    if class_names:
        if attribute is None:
            raise AvsegError(f"name a class with --attribute: one of {', '.join(class_names)}")
        index = class_names.index(attribute) if attribute in class_names else (int(attribute) if attribute.isdigit() else -1)
        if not 0 <= index < len(class_names):
            raise AvsegError(f"'{attribute}' is not a class of the dataset: {', '.join(class_names)}")
        return labels == index, class_names[index]
    raise AvsegError("the dataset has neither attribute nor class labels")
