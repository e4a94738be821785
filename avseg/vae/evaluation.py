"""Evaluator of the image autoencoders/VAEs, used by the shared trainer and evaluation tool.

``VaeEvaluator(cfg).evaluate(model, loader, device)`` returns image-averaged values:

* ``loss``, ``reconstruction_loss``, ``kl_loss``: the training objective in its convention (``book`` or
  ``elbo``), from one posterior sample per image as the book's ``test_step`` does. ``loss`` is the
  primary metric (lower is better).
* ``neg_elbo`` (VAE) or ``reconstruction_nll`` (autoencoder): -log p(x|z) (+ KL) in nats per image under
  the decoder likelihood the convention implies (Bernoulli for ``bce``; against grey-level targets this
  is the cross-entropy form of the ELBO, as pythae reports it).
* ``mse``: per-element mean squared error of the reconstruction (from the same posterior sample).
* ``iwae_nll`` (VAE, when ``model.vae.iwae_images`` > 0): the importance-weighted NLL bound with
  ``model.vae.iwae_samples`` samples on the first ``iwae_images`` images, plus ``iwae_samples`` and
  ``iwae_images`` (how many images it used).

Posterior samples come from a generator seeded by ``cfg.seed``, so repeated evaluations agree.
"""
from __future__ import annotations

from typing import Dict

import torch

from avseg.errors import ConfigError, DatasetError
from avseg.vae.explore import importance_weighted_log_likelihood
from avseg.vae.losses import kl_to_standard_normal


class VaeEvaluator:
    """Dataset-level metrics of an :class:`~avseg.vae.models.ImageAutoencoder` (see the module docstring)."""

    primary_metric = "loss"
    higher_is_better = False

    def __init__(self, cfg):
        settings = cfg.model.vae
        if settings.iwae_samples < 1:
            raise ConfigError(f"key 'model.vae.iwae_samples': must be >= 1, got {settings.iwae_samples}")
        if settings.iwae_images < 0:
            raise ConfigError(f"key 'model.vae.iwae_images': must be >= 0, got {settings.iwae_images}")
        self.iwae_samples = settings.iwae_samples
        self.iwae_images = settings.iwae_images
        self.seed = cfg.seed

    @torch.no_grad()
    def evaluate(self, model, loader, device) -> Dict[str, float]:
        model = getattr(model, "module", model)
        was_training = model.training
        model.eval()
        generator = torch.Generator(device=device).manual_seed(self.seed)
        sums: Dict[str, float] = {}
        count, iwae_sum, iwae_count = 0, 0.0, 0

        def add(name: str, value: torch.Tensor, weight: int) -> None:
            sums[name] = sums.get(name, 0.0) + float(value) * weight

        for batch in loader:
            images = batch["images"].to(device)
            size = len(images)
            z_mean, z_log_var = model.encode(images)
            z = z_mean
            if z_log_var is not None:
                z = z_mean + torch.exp(0.5 * z_log_var) * torch.randn(z_mean.shape, generator=generator, device=device)
            logits = model.decode_logits(z)
            for name, value in model.loss_settings(logits, images, z_mean, z_log_var).items():
                add(name, value, size)
            reconstruction_nll = -model.log_likelihood(logits, images)
            if z_log_var is not None:
                add("neg_elbo", (reconstruction_nll + kl_to_standard_normal(z_mean, z_log_var).double()).mean(), size)
            else:
                add("reconstruction_nll", reconstruction_nll.mean(), size)
            add("mse", (torch.sigmoid(logits) - images).pow(2).mean(), size)
            count += size
            if z_log_var is not None and iwae_count < self.iwae_images:
                subset = images[: self.iwae_images - iwae_count]
                bound = importance_weighted_log_likelihood(model, subset, self.iwae_samples, generator=generator)
                iwae_sum -= bound.sum().item()
                iwae_count += len(subset)
        model.train(was_training)
        if count == 0:
            raise DatasetError("the evaluation split holds no images")
        metrics = {name: total / count for name, total in sums.items()}
        if iwae_count:
            metrics.update(iwae_nll=iwae_sum / iwae_count, iwae_samples=float(self.iwae_samples), iwae_images=float(iwae_count))
        return metrics
