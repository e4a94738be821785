"""Inference on any video with sound: :class:`Segmenter` (checkpoint → masks per frame), PyAV video
input/output (:mod:`avseg.inference.video`) and mask drawing (:mod:`avseg.inference.overlay`)."""
from avseg.inference.segmenter import MediaInput, Prediction, Segmenter

__all__ = ["MediaInput", "Prediction", "Segmenter"]
