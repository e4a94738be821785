#!/usr/bin/env python
"""``make demo``: the whole avseg pipeline on a small synthetic S4 set, on CPU; see avseg/cli/quickstart.py."""
from avseg.cli.quickstart import entry

if __name__ == "__main__":
    entry()
