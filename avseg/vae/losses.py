"""Loss conventions of the image autoencoders/VAEs, the closed-form KL and the decoder likelihoods.

Two conventions, named in ``model.vae.loss`` and logged with every run:

``book`` (Generative Deep Learning, 2nd ed., chapter 3, Keras)::

    loss = beta * mean_over_elements(recon(x, x_hat)) + sum_over_latent(KL),   averaged over the batch

with ``recon`` the element-wise binary cross-entropy (Fashion-MNIST, beta = 500) or squared error
(faces, beta = 2000). The logged ``reconstruction_loss`` and ``kl_loss`` are the book's logged values.

``elbo`` (the usual negative evidence lower bound, in nats per image)::

    loss = -sum_over_elements(log p(x | z)) + kl_weight * sum_over_latent(KL),   averaged over the batch

with a Bernoulli decoder (``bce``: summed BCE) or a Gaussian decoder of fixed variance sigma^2
(``mse``: SSE / (2 sigma^2) + D/2 log(2 pi sigma^2)).

Mapping (D = C*H*W elements per image). Dividing the book loss by beta / D gives

* ``bce``: book(beta) = (beta / D) * [summed BCE + (D / beta) * KL], i.e. ``elbo`` with
  ``kl_weight = D / beta``: 1024 / 500 = 2.048 for 32x32 Fashion-MNIST (a beta-VAE with beta ~ 2).
* ``mse``: book(beta) = (beta / D) * SSE + KL = SSE / (2 sigma^2) + KL with ``sigma^2 = D / (2 beta)``:
  12288 / 4000 = 3.072 for 64x64x3 faces, i.e. exactly ``elbo`` with ``gaussian_variance = D / (2 beta)``
  and ``kl_weight = 1``, less the constant normaliser D/2 log(2 pi sigma^2).

A positive factor only rescales gradients (Adam is nearly invariant to it), so both conventions
train the same model; only the logged values differ. :func:`book_to_elbo` returns the equivalent
``elbo`` settings, and the book models' likelihood (used for the NLL bound) is the one implied here.

The BCE is computed from the decoder's logits (exact even for saturated pixels). Keras computes it
from the cached sigmoid logits or clips probabilities to [1e-7, 1 - 1e-7]; the two only differ on
saturated pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from avseg.errors import ConfigError

LOSS_CONVENTIONS = ("book", "elbo")
RECONSTRUCTIONS = ("bce", "mse")


def check_loss_settings(loss: str, recon: str, beta: float, kl_weight: float, gaussian_variance: float) -> None:
    """Raise :class:`ConfigError` naming the ``model.vae`` key that is out of range."""
    if loss not in LOSS_CONVENTIONS:
        raise ConfigError(f"key 'model.vae.loss': '{loss}' is not one of {LOSS_CONVENTIONS}")
    if recon not in RECONSTRUCTIONS:
        raise ConfigError(f"key 'model.vae.recon': '{recon}' is not one of {RECONSTRUCTIONS}")
    if beta <= 0:
        raise ConfigError(f"key 'model.vae.beta': must be > 0, got {beta}")
    if kl_weight < 0:
        raise ConfigError(f"key 'model.vae.kl_weight': must be >= 0, got {kl_weight}")
    if gaussian_variance <= 0:
        raise ConfigError(f"key 'model.vae.gaussian_variance': must be > 0, got {gaussian_variance}")


def kl_to_standard_normal(z_mean: torch.Tensor, z_log_var: torch.Tensor) -> torch.Tensor:
    """KL( N(z_mean, exp(z_log_var)) || N(0, I) ) summed over the latent: ``[B, d] -> [B]``."""
    return 0.5 * (z_mean.pow(2) + z_log_var.exp() - 1.0 - z_log_var).sum(dim=1)


def elementwise_reconstruction(logits: torch.Tensor, targets: torch.Tensor, recon: str) -> torch.Tensor:
    """Per-element BCE (``bce``) or squared error of sigmoid(logits) (``mse``): ``[B, C, H, W]``."""
    if recon == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (torch.sigmoid(logits) - targets).pow(2)


def implied_gaussian_variance(loss: str, beta: float, gaussian_variance: float, num_elements: int) -> float:
    """Decoder variance of an ``mse`` model: ``D / (2 beta)`` under ``book``, the configured one under ``elbo``."""
    return num_elements / (2.0 * beta) if loss == "book" else gaussian_variance


def log_likelihood(logits: torch.Tensor, targets: torch.Tensor, recon: str, variance: float = 1.0) -> torch.Tensor:
    """log p(x | z) summed over the elements, in nats (float64): ``[B, C, H, W] -> [B]``.

    ``bce``: Bernoulli with probabilities sigmoid(logits) (a likelihood only for binary targets).
    ``mse``: Gaussian with mean sigmoid(logits) and the given variance (a density on continuous x).
    """
    elements = elementwise_reconstruction(logits, targets, recon).flatten(1).double()
    if recon == "bce":
        return -elements.sum(dim=1)
    num_elements = elements.shape[1]
    return -(elements.sum(dim=1) / (2.0 * variance) + 0.5 * num_elements * math.log(2.0 * math.pi * variance))


def autoencoder_loss(
    logits: torch.Tensor,
    images: torch.Tensor,
    z_mean: Optional[torch.Tensor],
    z_log_var: Optional[torch.Tensor],
    loss: str,
    recon: str,
    beta: float,
    kl_weight: float,
    gaussian_variance: float,
) -> Dict[str, torch.Tensor]:
    """Named loss terms (scalars) and their total ``loss`` for one batch.

    logits, images: ``[B, C, H, W]``; z_mean, z_log_var: ``[B, d]``; ``z_log_var`` None: a plain autoencoder (no KL).
    Returns ``reconstruction_loss``, ``kl_loss`` (unweighted, VAE only) and ``loss``, always in float32
    (also under bf16/fp16 autocast: the sums over a thousand pixels need float32 precision).
    """
    with torch.autocast(logits.device.type, enabled=False):
        logits, images, z_mean, z_log_var = (_at_least_float32(t) for t in (logits, images, z_mean, z_log_var))
        return _autoencoder_loss(logits, images, z_mean, z_log_var, loss, recon, beta, kl_weight, gaussian_variance)


def _at_least_float32(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """float16/bfloat16 (autocast outputs) → float32; float32, float64 and None unchanged."""
    return tensor.float() if tensor is not None and tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _autoencoder_loss(logits, images, z_mean, z_log_var, loss, recon, beta, kl_weight, gaussian_variance) -> Dict[str, torch.Tensor]:
    elements = elementwise_reconstruction(logits, images, recon).flatten(1)
    if loss == "book":
        reconstruction = beta * elements.mean(dim=1).mean()
        weight = 1.0
    else:
        reconstruction = elements.sum(dim=1).mean()
        if recon == "mse":
            normaliser = 0.5 * elements.shape[1] * math.log(2.0 * math.pi * gaussian_variance)
            reconstruction = reconstruction / (2.0 * gaussian_variance) + normaliser
        weight = kl_weight
    terms = {"reconstruction_loss": reconstruction}
    total = reconstruction
    if z_log_var is not None:
        kl = kl_to_standard_normal(z_mean, z_log_var).mean()
        terms["kl_loss"] = kl
        total = total + weight * kl
    terms["loss"] = total
    return terms


def book_to_elbo(recon: str, beta: float, num_elements: int) -> Dict[str, float]:
    """The ``elbo`` settings that train the same model as ``book`` with this beta (see module docstring).

    Returns ``kl_weight`` and, for ``mse``, ``gaussian_variance``; plus ``scale`` with
    book loss = scale * elbo loss (up to the Gaussian normaliser constant).
    """
    if recon == "bce":
        return {"kl_weight": num_elements / beta, "scale": beta / num_elements}
    return {"kl_weight": 1.0, "gaussian_variance": num_elements / (2.0 * beta), "scale": 1.0}


@dataclass(frozen=True)
class LossSettings:
    """One model's loss convention (see the module docstring); checked on construction."""

    loss: str = "book"
    recon: str = "bce"
    beta: float = 500.0
    kl_weight: float = 1.0
    gaussian_variance: float = 1.0

    def __post_init__(self):
        check_loss_settings(self.loss, self.recon, self.beta, self.kl_weight, self.gaussian_variance)

    def __call__(self, logits, images, z_mean=None, z_log_var=None) -> Dict[str, torch.Tensor]:
        """Loss terms of one batch; see :func:`autoencoder_loss`."""
        return autoencoder_loss(logits, images, z_mean, z_log_var, self.loss, self.recon, self.beta, self.kl_weight, self.gaussian_variance)

    def log_likelihood(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(x | z) in nats under the likelihood this convention implies: ``[B, C, H, W] -> [B]`` float64."""
        variance = implied_gaussian_variance(self.loss, self.beta, self.gaussian_variance, targets[0].numel())
        return log_likelihood(logits, targets, self.recon, variance)
