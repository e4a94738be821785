"""Image autoencoder and VAE baselines (Generative Deep Learning, chapter 3) with latent-space tools.

Models: :class:`ConvAutoencoder`, :class:`FashionVAE`, :class:`FacesVAE` (``build_vae_model(cfg)``);
losses and their ``book``/``elbo`` conventions: :mod:`avseg.vae.losses`; datasets:
``build_vae_dataset(cfg, split, train)``; evaluator: :class:`VaeEvaluator`; tools: :mod:`avseg.vae.explore`.
"""
from avseg.vae.data import build_vae_dataset, image_shape, read_idx
from avseg.vae.evaluation import VaeEvaluator
from avseg.vae.losses import LossSettings, book_to_elbo, kl_to_standard_normal
from avseg.vae.models import ConvAutoencoder, FacesVAE, FashionVAE, ImageAutoencoder, build_vae_model

__all__ = [
    "ConvAutoencoder",
    "FacesVAE",
    "FashionVAE",
    "ImageAutoencoder",
    "LossSettings",
    "VaeEvaluator",
    "book_to_elbo",
    "build_vae_dataset",
    "build_vae_model",
    "image_shape",
    "kl_to_standard_normal",
    "read_idx",
]
