"""The book's convolutional autoencoder and VAEs (Generative Deep Learning, 2nd ed., chapter 3), in PyTorch.

* :class:`ConvAutoencoder`: 32x32 grey images, three stride-2 convs (32/64/128, ReLU), a 2-D embedding,
  a mirrored decoder of transposed convs ending in a 3x3 conv; 96,770 + 246,273 parameters.
* :class:`FashionVAE`: the same network with ``z_mean`` and ``z_log_var`` heads and reparameterisation.
* :class:`FacesVAE`: 64x64 RGB, 200-D latent, five [conv -> batch norm -> LeakyReLU(0.3)] blocks of 64
  filters each way (the book-era version, commit 3d28172).

Decoders output logits; :meth:`ImageAutoencoder.decode` applies the sigmoid (the book's output layer).
Keras defaults are kept where they change numbers: Glorot-uniform kernels with zero biases, LeakyReLU
slope 0.3, batch norm with eps 1e-3 and a 0.99 moving average (PyTorch ``momentum=0.01``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from avseg.errors import ConfigError
from avseg.models.registry import ModelRecord, register
from avseg.vae.losses import LossSettings

BATCH_NORM_EPS = 1e-3  # Keras BatchNormalization default
BATCH_NORM_MOMENTUM = 0.01  # Keras momentum 0.99: running = 0.99 * running + 0.01 * batch


def _activation(negative_slope: float) -> nn.Module:
    return nn.ReLU() if negative_slope == 0 else nn.LeakyReLU(negative_slope)


class _ConvTransposeSumBias(torch.autograd.Function):
    """conv_transpose2d whose backward takes the bias gradient as a plain sum of the output gradient."""

    @staticmethod
    def forward(ctx, images, weight, bias, stride, padding, output_padding, dilation, groups):
        ctx.save_for_backward(images, weight)
        ctx.settings = (stride, padding, output_padding, dilation, groups)
        return F.conv_transpose2d(images, weight, bias, stride, padding, output_padding, groups, dilation)

    @staticmethod
    def backward(ctx, grad_output):
        images, weight = ctx.saved_tensors
        stride, padding, output_padding, dilation, groups = ctx.settings
        needs_images, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_images = grad_weight = grad_bias = None
        if needs_images or needs_weight:
            grad_images, grad_weight, _ = torch.ops.aten.convolution_backward(
                grad_output, images, weight, None, stride, padding, dilation, True, output_padding, groups,
                [needs_images, needs_weight, False])
        if needs_bias:
            grad_bias = grad_output.sum(dim=(0, 2, 3))
        return grad_images, grad_weight, grad_bias, None, None, None, None, None


class SumBiasConvTranspose2d(nn.ConvTranspose2d):
    """:class:`torch.nn.ConvTranspose2d` whose bias gradient is a plain sum over ``[B, H, W]``.

    The same parameters, state dict, outputs and gradients. On CPU, oneDNN's transposed-convolution
    backward costs several milliseconds more per layer when it also returns the bias gradient than
    when it does not (``benchmarks/vae_step.py``); the sum costs a fraction of one.
    Under autocast the inputs are cast as autocast would cast them. Other devices, a given
    ``output_size`` and padding modes other than zeros use the ordinary module.
    """

    def forward(self, images: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None or images.device.type != "cpu" or self.bias is None or self.padding_mode != "zeros":
            return super().forward(images, output_size)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            images, weight, bias = images.to(dtype), weight.to(dtype), bias.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _ConvTransposeSumBias.apply(images, weight, bias, list(self.stride), list(self.padding),
                                               list(self.output_padding), list(self.dilation), self.groups)


def conv_block(in_channels: int, out_channels: int, transposed: bool, batch_norm: bool, negative_slope: float) -> nn.Sequential:
    """3x3 stride-2 "same" conv (halves H, W) or transposed conv (doubles them) -> [batch norm] -> activation."""
    if transposed:
        conv = SumBiasConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
    else:
        conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
    layers = [conv]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels, eps=BATCH_NORM_EPS, momentum=BATCH_NORM_MOMENTUM))
    layers.append(_activation(negative_slope))
    return nn.Sequential(*layers)


def _bottleneck_size(image_size: int, num_blocks: int) -> int:
    if image_size % (2**num_blocks):
        raise ConfigError(f"image size {image_size} is not divisible by 2^{num_blocks} (one halving per conv block)")
    return image_size // 2**num_blocks


class ConvEncoder(nn.Module):
    """images ``[B, C, H, W]`` -> ``(z_mean [B, d], z_log_var [B, d] or None)``.

    ``features``: stride-2 conv blocks then flatten; ``z_mean`` is the autoencoder's embedding layer;
    ``z_log_var`` exists only when ``variational``.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: Sequence[int],
        latent_dim: int,
        variational: bool,
        batch_norm: bool = False,
        negative_slope: float = 0.0,
    ):
        super().__init__()
        side = _bottleneck_size(image_size, len(channels))
        widths = [in_channels, *channels]
        blocks = [conv_block(cin, cout, False, batch_norm, negative_slope) for cin, cout in zip(widths[:-1], widths[1:])]
        self.features = nn.Sequential(*blocks, nn.Flatten())
        flat = channels[-1] * side * side
        self.z_mean = nn.Linear(flat, latent_dim)
        self.z_log_var = nn.Linear(flat, latent_dim) if variational else None

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        features = self.features(images)
        z_log_var = self.z_log_var(features) if self.z_log_var is not None else None
        return self.z_mean(features), z_log_var


class NarrowConv2d(nn.Conv2d):
    """A stride-1 "same" convolution with few output channels, such as the decoders' 32 -> 1 image layer.

    Computed as a 1x1 convolution to one map per (output channel, kernel tap) followed by shifted sums:
    the same parameters, state dict and results as :class:`torch.nn.Conv2d`, but about 2.5x faster on
    CPU (forward + backward), where oneDNN runs convolutions with 1-3 output channels at a few GFLOP/s.
    Other settings (stride, dilation, groups, other padding) fall back to the ordinary convolution.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.kernel_size[0]
        pad = size // 2
        plain = self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
        if not plain or self.kernel_size != (size, size) or self.padding != (pad, pad) or size % 2 == 0:
            return super().forward(images)
        batch, channels, height, width = images.shape
        out_channels = self.out_channels
        tap_weights = self.weight.permute(0, 2, 3, 1).reshape(out_channels * size * size, channels, 1, 1)
        taps = F.pad(F.conv2d(images, tap_weights), (pad, pad, pad, pad))
        taps = taps.view(batch, out_channels, size * size, height + 2 * pad, width + 2 * pad)
        output = self.bias.view(1, -1, 1, 1) if self.bias is not None else 0
        for row in range(size):
            for column in range(size):
                output = output + taps[:, :, row * size + column, row : row + height, column : column + width]
        return output


class ConvDecoder(nn.Module):
    """codes ``[B, d]`` -> logits ``[B, C, H, W]``.

    ``project``: dense layer (+ batch norm and activation when ``batch_norm``) reshaped to
    ``[channels[0], s, s]`` with ``s = image_size / 2^len(channels)``; ``blocks``: stride-2 transposed
    conv blocks to ``channels``; ``to_image``: 3x3 stride-1 conv (or transposed conv) to ``out_channels``.
    """

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        image_size: int,
        channels: Sequence[int],
        batch_norm: bool = False,
        negative_slope: float = 0.0,
        transposed_output: bool = False,
    ):
        super().__init__()
        side = _bottleneck_size(image_size, len(channels))
        project = [nn.Linear(latent_dim, channels[0] * side * side)]
        if batch_norm:
            project += [nn.BatchNorm1d(channels[0] * side * side, eps=BATCH_NORM_EPS, momentum=BATCH_NORM_MOMENTUM), _activation(negative_slope)]
        project.append(nn.Unflatten(1, (channels[0], side, side)))
        self.project = nn.Sequential(*project)
        widths = [channels[0], *channels]
        self.blocks = nn.Sequential(*[conv_block(cin, cout, True, batch_norm, negative_slope) for cin, cout in zip(widths[:-1], widths[1:])])
        output_conv = nn.ConvTranspose2d if transposed_output else NarrowConv2d
        self.to_image = output_conv(channels[-1], out_channels, 3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_image(self.blocks(self.project(z)))


def init_like_keras(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every conv and dense layer (Keras defaults)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class ImageAutoencoder(nn.Module):
    """Encoder, decoder and loss convention; a VAE when the encoder has a ``z_log_var`` head.

    ``forward(images [B, C, H, W])`` returns ``reconstructions`` (sigmoid of the logits), ``z``
    (the sampled code; the embedding for an autoencoder), ``z_mean``, ``z_log_var`` (VAE), the loss
    terms ``reconstruction_loss``, ``kl_loss`` (VAE) and their total ``loss``.
    """

    batch_keys = ("images",)

    def __init__(self, encoder: ConvEncoder, decoder: ConvDecoder, image_shape: Tuple[int, int, int], loss: LossSettings):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.image_shape = tuple(image_shape)
        self.loss_settings = loss
        init_like_keras(self)
        # oneDNN's NHWC (channels-last) convolution kernels are the faster ones on CPU (docs/vae.md, speed).
        self.to(memory_format=torch.channels_last)

    @property
    def variational(self) -> bool:
        return self.encoder.z_log_var is not None

    @property
    def latent_dim(self) -> int:
        return self.encoder.z_mean.out_features

    def encode(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(z_mean [B, d], z_log_var [B, d] or None)``."""
        return self.encoder(images.contiguous(memory_format=torch.channels_last))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The deterministic code (``z_mean``; the embedding of an autoencoder): ``[B, d]``."""
        return self.encode(images)[0]

    @staticmethod
    def reparameterize(z_mean: torch.Tensor, z_log_var: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(log_var / 2) * eps, eps ~ N(0, I)."""
        return z_mean + torch.exp(0.5 * z_log_var) * torch.randn_like(z_mean)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from codes ``[B, d]``: ``[B, C, H, W]``."""
        return torch.sigmoid(self.decoder(z))

    def log_likelihood(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(x | z) in nats (float64) under the decoder likelihood of the loss convention: ``[B]``."""
        return self.loss_settings.log_likelihood(logits, targets)

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        z_mean, z_log_var = self.encode(images)
        z = self.reparameterize(z_mean, z_log_var) if z_log_var is not None else z_mean
        logits = self.decoder(z)
        outputs = {"reconstructions": torch.sigmoid(logits), "z": z, "z_mean": z_mean}
        if z_log_var is not None:
            outputs["z_log_var"] = z_log_var
        outputs.update(self.loss_settings(logits, images, z_mean, z_log_var))
        return outputs


FASHION_CHANNELS = (32, 64, 128)


class ConvAutoencoder(ImageAutoencoder):
    """The book's autoencoder (``autoencoder.ipynb``); loss = mean BCE (``book`` with beta 1)."""

    variational_encoder = False

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 32,
        latent_dim: int = 2,
        channels: Sequence[int] = FASHION_CHANNELS,
        loss: LossSettings = LossSettings(loss="book", recon="bce", beta=1.0),
    ):
        encoder = ConvEncoder(in_channels, image_size, channels, latent_dim, variational=self.variational_encoder)
        decoder = ConvDecoder(latent_dim, in_channels, image_size, channels[::-1])
        super().__init__(encoder, decoder, (in_channels, image_size, image_size), loss)


class FashionVAE(ConvAutoencoder):
    """The book's Fashion-MNIST VAE (``vae_fashion.ipynb``): the same network with a ``z_log_var`` head;
    loss = 500 x mean BCE + KL."""

    variational_encoder = True

    def __init__(self, in_channels: int = 1, image_size: int = 32, latent_dim: int = 2, channels: Sequence[int] = FASHION_CHANNELS,
                 loss: LossSettings = LossSettings(loss="book", recon="bce", beta=500.0)):
        super().__init__(in_channels, image_size, latent_dim, channels, loss)


class FacesVAE(ImageAutoencoder):
    """The book-era CelebA VAE (``vae_faces.ipynb`` at 3d28172); loss = 2000 x mean squared error + KL."""

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 64,
        latent_dim: int = 200,
        num_features: int = 64,
        num_blocks: int = 5,
        negative_slope: float = 0.3,
        loss: LossSettings = LossSettings(loss="book", recon="mse", beta=2000.0),
    ):
        channels = (num_features,) * num_blocks
        encoder = ConvEncoder(in_channels, image_size, channels, latent_dim, True, batch_norm=True, negative_slope=negative_slope)
        decoder = ConvDecoder(latent_dim, in_channels, image_size, channels, True, negative_slope, transposed_output=True)
        super().__init__(encoder, decoder, (in_channels, image_size, image_size), loss)


def _loss_and_shape(cfg) -> Tuple[LossSettings, Tuple[int, int, int]]:
    """The loss settings of ``cfg.model.vae`` and the dataset's ``(C, H, W)``."""
    from avseg.vae.data import image_shape

    settings = cfg.model.vae
    if settings.latent_dim < 1:
        raise ConfigError(f"key 'model.vae.latent_dim': must be >= 1, got {settings.latent_dim}")
    loss = LossSettings(settings.loss, settings.recon, settings.beta, settings.kl_weight, settings.gaussian_variance)
    return loss, image_shape(cfg)


def build_conv_autoencoder(cfg) -> ConvAutoencoder:
    """:class:`ConvAutoencoder` from ``cfg.model.vae`` and the dataset's image shape."""
    loss, (channels, size, _) = _loss_and_shape(cfg)
    return ConvAutoencoder(channels, size, cfg.model.vae.latent_dim, FASHION_CHANNELS, loss)


def build_fashion_vae(cfg) -> FashionVAE:
    """:class:`FashionVAE` from ``cfg.model.vae`` and the dataset's image shape."""
    loss, (channels, size, _) = _loss_and_shape(cfg)
    return FashionVAE(channels, size, cfg.model.vae.latent_dim, FASHION_CHANNELS, loss)


def build_faces_vae(cfg) -> FacesVAE:
    """:class:`FacesVAE` from ``cfg.model.vae`` (latent size, filters, blocks, slope) and the image shape."""
    loss, (channels, size, _) = _loss_and_shape(cfg)
    settings = cfg.model.vae
    return FacesVAE(channels, size, settings.latent_dim, settings.num_features, settings.num_blocks, settings.negative_slope, loss)


def build_vae_model(cfg) -> ImageAutoencoder:
    """The image model named by ``cfg.model.name`` (any record of task ``image``), built by its record."""
    from avseg.models import registry

    record = registry.get(cfg.model.name)
    if record.task != "image":
        raise ConfigError(f"key 'model.name': '{record.name}' is not an image model {registry.names('image')}")
    return record.from_config(cfg)


_TINY_DIGITS = ("data.name=digits",)
register(ModelRecord("conv_ae", build_conv_autoencoder, ImageAutoencoder.batch_keys, "image", tiny_overrides=_TINY_DIGITS,
                     description="the book's convolutional autoencoder (Generative Deep Learning, ch. 3)"))
register(ModelRecord("fashion_vae", build_fashion_vae, ImageAutoencoder.batch_keys, "image", tiny_overrides=_TINY_DIGITS,
                     description="the book's Fashion-MNIST VAE"))
register(ModelRecord("faces_vae", build_faces_vae, ImageAutoencoder.batch_keys, "image",
                     tiny_overrides=("data.name=lfw", "data.vae.image_size=32", "model.vae.latent_dim=8",
                                     "model.vae.num_features=8", "model.vae.num_blocks=3"),
                     description="the book-era CelebA VAE"))
