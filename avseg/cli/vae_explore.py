"""``tools/vae_explore.py``: latent-space pictures and the NLL bound of a trained autoencoder/VAE checkpoint.

Each subcommand writes PNGs into ``--out`` (default: ``vae_explore/`` beside the checkpoint)::

    python tools/vae_explore.py reconstruct --ckpt runs/fashion_vae/best.pth
    python tools/vae_explore.py sample      --ckpt ... [--sampler normal|box|gmm]
    python tools/vae_explore.py scatter     --ckpt ... [--attribute Sandal]
    python tools/vae_explore.py grid        --ckpt ... [--size 15 --quantile 0.01]
    python tools/vae_explore.py attribute   --ckpt ... --attribute Blond_Hair
    python tools/vae_explore.py arithmetic  --ckpt ... --add Smiling --subtract Male
    python tools/vae_explore.py morph       --ckpt ... [--index-a 0 --index-b 1 --steps 11]
    python tools/vae_explore.py nll         --ckpt ... [--samples 5000 --images 1000]
    python tools/vae_explore.py all         --ckpt ... (every picture tool above)

Trailing ``key=value`` overrides change the stored config's data settings, e.g. ``data.root=/data/celeba``
or ``data.vae.binarize=dynamic`` (the NLL binarisation). Attributes are CelebA/lfw attribute names or
class names (Fashion-MNIST ``Sandal``, digits ``3``).
"""
from __future__ import annotations

import argparse
from typing import List, Optional

import torch

from avseg.cli.common import add_debug_argument, run_cli
from avseg.vae.explorer import COMMANDS, Explorer, ExploreOptions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae_explore", description="Latent-space tools for avseg autoencoder/VAE checkpoints (docs/vae.md).")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--ckpt", "--checkpoint", dest="checkpoint", required=True,
                        help="an avseg checkpoint of an image autoencoder/VAE (--checkpoint is an alias)")
    parser.add_argument("--out", help="output folder (default: <checkpoint folder>/vae_explore)")
    parser.add_argument("--split", default="test", help="images to explore (default test)")
    parser.add_argument("--images", type=int, default=5000, help="at most this many split images for codes, scatter and vectors (default 5000)")
    parser.add_argument("--num", type=int, default=10, help="images per picture (reconstruct, attribute rows x5 cap, samples x3)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", choices=("auto", "normal", "box", "gmm"), default="auto", help="auto: N(0, I) for a VAE, the embeddings' box for an autoencoder")
    parser.add_argument("--components", type=int, default=10, help="Gaussian-mixture components (--sampler gmm)")
    parser.add_argument("--fit-images", type=int, default=10000, help="training images whose codes fit the box/GMM samplers")
    parser.add_argument("--size", type=int, default=15, help="decode grid side")
    parser.add_argument("--quantile", type=float, default=0.01, help="VAE decode grid spans norm.ppf(q .. 1-q)")
    parser.add_argument("--attribute", help="attribute or class name (attribute, scatter colouring)")
    parser.add_argument("--add", action="append", default=[], help="attribute vector to add (arithmetic; repeatable)")
    parser.add_argument("--subtract", action="append", default=[], help="attribute vector to subtract (arithmetic; repeatable)")
    parser.add_argument("--scale", type=float, default=3.0, help="length of each added/subtracted vector (arithmetic)")
    parser.add_argument("--index-a", type=int, default=0, help="first morph image (index in the split)")
    parser.add_argument("--index-b", type=int, default=1, help="second morph image")
    parser.add_argument("--steps", type=int, default=11, help="morph steps, t = 0 .. 1 inclusive")
    parser.add_argument("--samples", type=int, default=5000, help="importance samples K of the NLL bound (default 5000)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the stored config (data.root=...)")
    add_debug_argument(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    torch.manual_seed(args.seed)
    explorer = Explorer(ExploreOptions(**{key: value for key, value in vars(args).items() if key not in ("command", "debug")}))
    for path in getattr(explorer, args.command)():
        print(f"wrote {path}")
    return 0


def entry() -> None:
    run_cli(main)
