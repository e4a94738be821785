#!/usr/bin/env python
"""Compare configs: ``python tools/compare.py --cfgs A.yaml B.yaml ... [--train] [--audio normal,shuffle] --out DIR [key=value ...]``."""
from avseg.cli.compare import entry

if __name__ == "__main__":
    entry()
