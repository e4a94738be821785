"""Losses: segmentation (BCE, F3Net structure loss), the audio-visual map (AVM) regulariser and the AVSS
(semantic) cross-entropy with its AV-map term."""
from avseg.losses.avm import avm_loss
from avseg.losses.segmentation import SEGMENTATION_LOSSES, bce_loss, segmentation_loss, select_annotated, structure_loss
from avseg.losses.semantic import foreground_map, semantic_avm_loss, semantic_ce_loss

__all__ = ["SEGMENTATION_LOSSES", "avm_loss", "bce_loss", "foreground_map", "segmentation_loss",
           "select_annotated", "semantic_avm_loss", "semantic_ce_loss", "structure_loss"]
