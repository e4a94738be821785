#!/usr/bin/env python
"""Raw AVSBench videos to frames, wav and log-mels: ``python tools/prepare_avsbench.py --root DIR --task s4|ms3|avss``."""
from avseg.cli.prepare_avsbench import entry

if __name__ == "__main__":
    entry()
