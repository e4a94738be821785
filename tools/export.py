#!/usr/bin/env python
"""Export an AVS checkpoint as ONNX or TorchScript: see ``python tools/export.py --help``."""
from avseg.cli.export import entry

if __name__ == "__main__":
    entry()
