#!/usr/bin/env python
"""Check an AVSBench copy: ``python tools/check_dataset.py --root DIR --task s4|ms3|avss``."""
from avseg.cli.check_dataset import entry

if __name__ == "__main__":
    entry()
