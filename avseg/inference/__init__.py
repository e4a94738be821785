"""Inference on any video with sound: :class:`Segmenter` (checkpoint → masks per frame), the per-frame
feature cache it uses (:mod:`avseg.inference.feature_cache`), live streams (:mod:`avseg.inference.stream`),
PyAV video input/output (:mod:`avseg.inference.video`), mask drawing (:mod:`avseg.inference.overlay`) and
the demo's output files (:mod:`avseg.inference.outputs`: never at an input, replaced atomically)."""
from avseg.inference.segmenter import MediaInput, Prediction, Segmenter
from avseg.inference.stream import SegmenterStream

__all__ = ["MediaInput", "Prediction", "Segmenter", "SegmenterStream"]
