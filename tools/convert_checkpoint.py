#!/usr/bin/env python
"""Convert official AVSBench / MMVAE-AVS weights: ``python tools/convert_checkpoint.py --from avsbench --cfg CFG [--vggish VGGISH.pth] IN OUT``."""
from avseg.cli.convert_checkpoint import entry

if __name__ == "__main__":
    entry()
