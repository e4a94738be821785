"""``tools/vae_explore.py``: latent-space pictures and the NLL bound of a trained autoencoder/VAE checkpoint.

Each subcommand writes PNGs into ``--out`` (default: ``vae_explore/`` beside the checkpoint)::

    python tools/vae_explore.py reconstruct --checkpoint runs/fashion_vae/best.pth
    python tools/vae_explore.py sample      --checkpoint ... [--sampler normal|box|gmm]
    python tools/vae_explore.py scatter     --checkpoint ... [--attribute Sandal]
    python tools/vae_explore.py grid        --checkpoint ... [--size 15 --quantile 0.01]
    python tools/vae_explore.py attribute   --checkpoint ... --attribute Blond_Hair
    python tools/vae_explore.py arithmetic  --checkpoint ... --add Smiling --subtract Male
    python tools/vae_explore.py morph       --checkpoint ... [--index-a 0 --index-b 1 --steps 11]
    python tools/vae_explore.py nll         --checkpoint ... [--samples 5000 --images 1000]
    python tools/vae_explore.py all         --checkpoint ... (every picture tool above)

Trailing ``key=value`` overrides change the stored config's data settings, e.g. ``data.root=/data/celeba``
or ``data.vae.binarize=dynamic`` (the NLL binarisation). Attributes are CelebA/lfw attribute names or
class names (Fashion-MNIST ``Sandal``, digits ``3``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

import torch
from torch.utils.data import DataLoader

from avseg.checkpoint import read_checkpoint
from avseg.cli.common import add_debug_argument, run_cli
from avseg.config import apply_overrides
from avseg.engine.run_setup import select_device
from avseg.errors import CheckpointError, ConfigError
from avseg.fileio import atomic_write_text
from avseg.vae import explore
from avseg.vae.data import build_vae_dataset
from avseg.vae.models import VAE_MODELS, build_vae_model

PICTURE_COMMANDS = ("reconstruct", "sample", "scatter", "grid", "attribute", "arithmetic", "morph")
COMMANDS = PICTURE_COMMANDS + ("nll", "all")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae_explore", description="Latent-space tools for avseg autoencoder/VAE checkpoints (docs/vae.md).")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--checkpoint", required=True, help="an avseg checkpoint of conv_ae, fashion_vae or faces_vae")
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


class Explorer:
    """A checkpoint's model and datasets, with one method per subcommand."""

    def __init__(self, args: argparse.Namespace):
        payload = read_checkpoint(args.checkpoint)
        self.cfg = apply_overrides(payload["config"], args.overrides)
        if self.cfg.model.name not in VAE_MODELS:
            raise CheckpointError(f"{args.checkpoint}: holds a '{self.cfg.model.name}' model, not one of {VAE_MODELS}")
        self.device = select_device(args.device)
        self.model = build_vae_model(self.cfg)
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{args.checkpoint}: weights do not fit the {self.cfg.model.name} it names ({str(exc).splitlines()[0]})") from None
        self.model.to(self.device).eval()
        self.args = args
        self.out = Path(args.out) if args.out else Path(args.checkpoint).parent / "vae_explore"
        self.dataset = build_vae_dataset(self.cfg, args.split, train=False)
        self.images, self.labels = explore.collect_images(self._loader(self.dataset), args.images)

    def _loader(self, dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.args.batch_size, shuffle=False, num_workers=0)

    def _fit_codes(self) -> torch.Tensor:
        train_set = build_vae_dataset(self.cfg, self.cfg.data.train_split, train=False)
        images, _ = explore.collect_images(self._loader(train_set), self.args.fit_images)
        return explore.encode_images(self.model, images)

    def _vector(self, name: Optional[str]) -> torch.Tensor:
        mask, _ = explore.matching_labels(self.labels, self.dataset, name)
        return explore.attribute_vector(explore.encode_images(self.model, self.images), mask)

    def reconstruct(self) -> List[Path]:
        return [explore.reconstruction_grid(self.model, self.images[: self.args.num], self.out / "reconstruct.png")]

    def sample(self) -> List[Path]:
        kind = self.args.sampler
        if kind == "auto":
            kind = "normal" if self.model.variational else "box"
        if kind == "normal":
            sampler = explore.NormalSampler(self.model.latent_dim)
        elif kind == "box":
            sampler = explore.BoxSampler(self._fit_codes())
        else:
            sampler = explore.GaussianMixture(self.args.components, seed=self.args.seed).fit(self._fit_codes())
        return [explore.sample_grid(self.model, sampler, self.out / f"sample_{kind}.png", num=3 * self.args.num, seed=self.args.seed)]

    def scatter(self) -> List[Path]:
        codes = explore.encode_images(self.model, self.images, sampled=self.model.variational)
        names = getattr(self.dataset, "class_names", None)
        colours = self.labels
        if self.labels.dim() == 2 or self.args.attribute:
            colours, attribute = explore.matching_labels(self.labels, self.dataset, self.args.attribute)
            names = [f"not {attribute}", attribute]
        title = f"{self.cfg.model.name} ({len(codes)} {self.args.split} images)"
        return [explore.latent_scatter(codes, colours.long(), self.out / "scatter.png", names, self.model.variational, title)]

    def grid(self) -> List[Path]:
        codes = None if self.model.variational else explore.encode_images(self.model, self.images)
        return [explore.decode_grid(self.model, self.out / "grid.png", self.args.size, codes, self.args.quantile)]

    def attribute(self) -> List[Path]:
        mask, name = explore.matching_labels(self.labels, self.dataset, self.args.attribute)
        vector = explore.attribute_vector(explore.encode_images(self.model, self.images), mask)
        rows = self.images[: min(5, self.args.num)]
        return [explore.attribute_grid(self.model, rows, vector, self.out / f"attribute_{_slug(name)}.png")]

    def arithmetic(self) -> List[Path]:
        terms = [(name, self.args.scale, self._vector(name)) for name in self.args.add]
        terms += [(name, -self.args.scale, self._vector(name)) for name in self.args.subtract]
        if not terms:
            raise ConfigError("arithmetic needs --add NAME and/or --subtract NAME")
        return [explore.latent_arithmetic(self.model, self.images[: self.args.num], terms, self.out / "arithmetic.png")]

    def morph(self) -> List[Path]:
        count = len(self.images)
        for index in (self.args.index_a, self.args.index_b):
            if not 0 <= index < count:
                raise ConfigError(f"morph index {index} is outside the {count} loaded {self.args.split} images")
        a, b = self.images[self.args.index_a], self.images[self.args.index_b]
        return [explore.morph_grid(self.model, a, b, self.out / "morph.png", self.args.steps)]

    def nll(self) -> List[Path]:
        result = explore.importance_weighted_nll(self.model, self._loader(self.dataset), self.args.samples, self.args.images, self.args.seed)
        binarize = self.cfg.data.vae.binarize
        report = {key: value for key, value in result.items() if key != "per_image"}
        report.update(split=self.args.split, binarize=binarize, binarize_seed=self.cfg.data.vae.binarize_seed, recon=self.cfg.model.vae.recon)
        print(f"IWAE NLL bound: {report['nll']:.2f} ± {report['nll_stderr']:.2f} nats per image "
              f"(K={report['num_samples']}, {report['num_images']} {self.args.split} images, binarize={binarize})")
        atomic_write_text(self.out / "nll.json", json.dumps(report, indent=2) + "\n")
        title = f"K={report['num_samples']}, binarize={binarize}, mean {report['nll']:.2f} nats"
        return [explore.nll_histogram(result["per_image"], self.out / "nll.png", title)]

    def all(self) -> List[Path]:
        paths = []
        for command in ("reconstruct", "sample", "scatter", "grid", "morph"):
            paths += getattr(self, command)()
        if getattr(self.dataset, "attribute_names", None) or self.args.attribute:
            paths += self.attribute()
        return paths


def _slug(name: str) -> str:
    return "".join(char if char.isalnum() else "_" for char in name)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    torch.manual_seed(args.seed)
    explorer = Explorer(args)
    for path in getattr(explorer, args.command)():
        print(f"wrote {path}")
    return 0


def entry() -> None:
    run_cli(main)
