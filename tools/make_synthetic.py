#!/usr/bin/env python
"""Synthetic AVSBench: ``python tools/make_synthetic.py --task s4|ms3|v2|avss --out DIR --videos N --size S --seed K``."""
from avseg.cli.make_synthetic import entry

if __name__ == "__main__":
    entry()
