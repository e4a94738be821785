#!/usr/bin/env python
"""Evaluate with the exact AVSBench metrics: ``python tools/eval.py --ckpt PATH [--split val|test] [key=value ...]``."""
from avseg.cli.eval import entry

if __name__ == "__main__":
    entry()
