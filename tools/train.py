#!/usr/bin/env python
"""Train an avseg model: ``python tools/train.py --cfg CFG [--out DIR] [--resume [PATH]] [key=value ...]``."""
from avseg.cli.train import entry

if __name__ == "__main__":
    entry()
