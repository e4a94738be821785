"""Models: every registered model family, its building blocks (backbones, TPAVI, decoders), the factory.

``build_model(cfg)`` builds the model named by ``cfg.model.name`` through its registry record;
``load_model(path)`` rebuilds one from an avseg checkpoint; ``load_weights(model, path)`` also reads the
official release formats the records convert. Each import of a family module below registers its record.
"""
from avseg.models import registry
from avseg.models.tpavi_model import AVSBenchModel, DilatedConvSum, build_avsbench_model
from avseg.models.ecmvae import ECMVAE, ECMVAELoss, build_ecmvae
import avseg.vae.models  # noqa: F401  registers the image AE/VAE models
from avseg.models.backbones import BACKBONES, VisualBackbone, build_backbone
from avseg.models.convert import convert_avsbench_state_dict
from avseg.models.decoders import FeatureFusionBlock, RefineDecoder, ResidualConvUnit
from avseg.models.factory import build_model, detect_format, load_model, load_weights
from avseg.models.tpavi import TPAVI
from avseg.weights import LoadReport

__all__ = [
    "AVSBenchModel",
    "BACKBONES",
    "DilatedConvSum",
    "ECMVAE",
    "ECMVAELoss",
    "FeatureFusionBlock",
    "LoadReport",
    "RefineDecoder",
    "ResidualConvUnit",
    "TPAVI",
    "VisualBackbone",
    "build_avsbench_model",
    "build_backbone",
    "build_ecmvae",
    "build_model",
    "convert_avsbench_state_dict",
    "detect_format",
    "load_model",
    "load_weights",
    "registry",
]
