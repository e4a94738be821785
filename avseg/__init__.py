"""avseg: audio-visual segmentation toolkit (ECMVAE, AVSBench TPAVI, exact AVSBench metrics, VAE baselines)."""
from avseg.version import __version__

__all__ = ["__version__", "Segmenter"]


def __getattr__(name):
    if name == "Segmenter":
        from avseg.inference.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'avseg' has no attribute {name!r}")
