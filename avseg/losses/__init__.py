"""Losses: segmentation (BCE, F3Net structure loss) and the audio-visual map (AVM) regulariser."""
from avseg.losses.avm import avm_loss
from avseg.losses.segmentation import SEGMENTATION_LOSSES, bce_loss, segmentation_loss, select_annotated, structure_loss

__all__ = ["SEGMENTATION_LOSSES", "avm_loss", "bce_loss", "segmentation_loss", "select_annotated", "structure_loss"]
