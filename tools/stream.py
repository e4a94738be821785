"""Segment a live source (a video file in real time, or a camera and a microphone): see ``python tools/stream.py --help``."""
from avseg.cli.stream import entry

if __name__ == "__main__":
    entry()
