"""Segment the sounding objects of a video: see ``python tools/demo.py --help`` and docs/demo.md."""
from avseg.cli.demo import entry

if __name__ == "__main__":
    entry()
