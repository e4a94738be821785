"""Command-line entry points; ``tools/*.py`` and the ``avseg-*`` console scripts call these."""
