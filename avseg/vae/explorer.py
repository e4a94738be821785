"""The ``tools/vae_explore.py`` commands: an image autoencoder/VAE checkpoint, its data, one method per picture.

:class:`Explorer` loads the checkpoint (the model kind is checked against the registry), applies
``key=value`` overrides to the stored config's data settings and calls the tools of
:mod:`avseg.vae.explore`; every method writes into ``options.out`` and returns the paths it wrote.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
from torch.utils.data import DataLoader

from avseg.config import apply_overrides
from avseg.engine.run_setup import select_device
from avseg.errors import CheckpointError, ConfigError
from avseg.fileio import atomic_write_text
from avseg.models import load_model, registry
from avseg.vae import explore
from avseg.vae.data import build_vae_dataset

PICTURE_COMMANDS = ("reconstruct", "sample", "scatter", "grid", "attribute", "arithmetic", "morph")
COMMANDS = PICTURE_COMMANDS + ("nll", "all")


@dataclass
class ExploreOptions:
    """What to explore and how; the defaults are those of ``tools/vae_explore.py`` (see its ``--help``)."""

    checkpoint: str
    out: Optional[str] = None
    split: str = "test"
    images: int = 5000
    num: int = 10
    device: str = "auto"
    seed: int = 0
    sampler: str = "auto"
    components: int = 10
    fit_images: int = 10000
    size: int = 15
    quantile: float = 0.01
    attribute: Optional[str] = None
    add: List[str] = field(default_factory=list)
    subtract: List[str] = field(default_factory=list)
    scale: float = 3.0
    index_a: int = 0
    index_b: int = 1
    steps: int = 11
    samples: int = 5000
    batch_size: int = 100
    overrides: List[str] = field(default_factory=list)


class Explorer:
    """A checkpoint's model and datasets, with one method per command (:data:`COMMANDS`); each returns the PNGs written."""

    def __init__(self, args: ExploreOptions):
        self.device = select_device(args.device)
        self.model = load_model(args.checkpoint, self.device)
        name = self.model.cfg.model.name
        if registry.record_of(self.model).task != "image":
            raise CheckpointError(
                f"{args.checkpoint}: holds a '{name}' model (task '{registry.record_of(self.model).task}'); "
                f"these tools explore image autoencoders/VAEs ({', '.join(registry.names('image'))})"
            )
        self.cfg = apply_overrides(self.model.cfg, args.overrides)
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
