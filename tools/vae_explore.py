#!/usr/bin/env python
"""Latent-space pictures and the NLL bound of an autoencoder/VAE checkpoint; see avseg/cli/vae_explore.py."""
from avseg.cli.vae_explore import entry

if __name__ == "__main__":
    entry()
