#!/usr/bin/env python
"""The browser demo (Gradio; pip install 'avseg[web]'): see ``python tools/web.py --help``."""
from avseg.cli.web import entry

if __name__ == "__main__":
    entry()
