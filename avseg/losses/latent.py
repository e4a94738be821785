"""Latent-space losses of ECMVAE: Gaussian KL, shared-code divergences, DSN difference loss, Barber–Agakov term.

All Gaussians are diagonal and given by ``(mu, logvar)`` tensors of shape ``[N, D]`` with
``logvar = log σ²``. Per-sample functions return ``[N]``; the caller averages over the frames it
chooses (see ``docs/ecmvae.md``), with :func:`avseg.losses.reduction.batch_mean` so that under DDP
the mean is over the global batch. The scalar losses here do the same, and the difference loss
centres and correlates the codes of the global batch (:func:`~avseg.losses.reduction.gather_for_loss`).
Where the released MMVAE-AVS code differs from the textbook formula the function says so and offers
the released form by a parameter.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from avseg.losses.reduction import batch_mean, gather_for_loss, global_mean

SHARED_DIVERGENCES = ("js_released", "js_mc", "kl")
KL_FORMS = ("analytic", "released")
MI_FORMS = ("released", "gaussian")

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor,
                form: str = "analytic") -> torch.Tensor:
    """KL(q ‖ p) of diagonal Gaussians, summed over the latent dimension: ``[N, D] -> [N]``.

    ``form="analytic"`` reads ``logvar`` as log σ² (the way the codes are sampled).
    ``form="released"`` reproduces MMVAE-AVS, whose distribution objects use ``exp(logvar)`` as the
    standard deviation, i.e. the same formula with ``2·logvar`` as log σ².
    """
    if form not in KL_FORMS:
        raise ValueError(f"KL form must be one of {KL_FORMS}, got '{form}'")
    if form == "released":
        logvar_q, logvar_p = 2.0 * logvar_q, 2.0 * logvar_p
    var_ratio = torch.exp(logvar_q - logvar_p)
    mean_term = (mu_q - mu_p).pow(2) * torch.exp(-logvar_p)
    return 0.5 * (var_ratio + mean_term - 1.0 - (logvar_q - logvar_p)).sum(dim=-1)


def released_js_divergence(mu_p: torch.Tensor, logvar_p: torch.Tensor, mu_q: torch.Tensor, logvar_q: torch.Tensor,
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The released stochastic "JS" term between two diagonal Gaussians (scalar, global batch mean).

    As in MMVAE-AVS: draw one sample per element from each Gaussian (no gradient through the draw),
    take each density's value at its own sample, ``p = N(x_p; μ_p, σ_p)`` and ``q = N(x_q; μ_q, σ_q)``
    (elementwise, shape ``[N, D]``), form ``m = (p + q) / 2`` and return
    ``½·[Σ p·(log p − log m) + Σ q·(log q − log m)] / N``. This treats density *values* as if they were
    probability vectors; it is not the Jensen–Shannon divergence of the two Gaussians
    (:func:`monte_carlo_js_divergence` estimates that).
    """
    def density_at_own_sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        with torch.no_grad():
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            sample = mu + eps * std
        log_density = -0.5 * ((sample - mu) / std).pow(2) - torch.log(std) - 0.5 * _LOG_2PI
        return log_density.exp()

    p = density_at_own_sample(mu_p, logvar_p)
    q = density_at_own_sample(mu_q, logvar_q)
    log_m = torch.log(0.5 * (p + q))
    return global_mean(0.5 * (F.kl_div(log_m, p, reduction="sum") + F.kl_div(log_m, q, reduction="sum")), mu_p.shape[0])


def _diag_gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; μ, diag σ²) summed over the last dimension; broadcasts a leading sample dimension."""
    return -0.5 * ((x - mu).pow(2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(dim=-1)


def monte_carlo_js_divergence(mu_p: torch.Tensor, logvar_p: torch.Tensor, mu_q: torch.Tensor, logvar_q: torch.Tensor,
                              num_samples: int = 8, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Jensen–Shannon divergence of two diagonal Gaussians, Monte-Carlo estimate: ``[N, D] -> [N]``.

    JS(P, Q) = ½·E_P[log P − log M] + ½·E_Q[log Q − log M] with M = ½(P + Q), estimated with
    ``num_samples`` reparameterised draws from each of P and Q (differentiable in both). The
    estimate lies in [0, log 2] for every draw.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")

    def draws(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        eps = torch.randn((num_samples,) + tuple(mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def log_densities(x: torch.Tensor):
        log_p = _diag_gaussian_log_prob(x, mu_p, logvar_p)
        log_q = _diag_gaussian_log_prob(x, mu_q, logvar_q)
        return log_p, log_q, torch.logaddexp(log_p, log_q) - math.log(2.0)

    log_p, _, log_m = log_densities(draws(mu_p, logvar_p))
    from_p = (log_p - log_m).mean(dim=0)
    _, log_q, log_m = log_densities(draws(mu_q, logvar_q))
    from_q = (log_q - log_m).mean(dim=0)
    return 0.5 * (from_p + from_q)


def shared_code_divergence(name: str, mu_prior: torch.Tensor, logvar_prior: torch.Tensor, mu_post: torch.Tensor,
                           logvar_post: torch.Tensor, num_samples: int = 8, kl_form: str = "analytic") -> torch.Tensor:
    """Divergence between the prior and posterior shared code, a scalar averaged over the (global) batch.

    ``name``: ``js_released`` (the released stochastic approximation), ``js_mc`` (Monte-Carlo JS of
    the two Gaussians) or ``kl`` (analytic KL(posterior ‖ prior), as for the specific codes).
    """
    if name == "js_released":
        return released_js_divergence(mu_prior, logvar_prior, mu_post, logvar_post)
    if name == "js_mc":
        return batch_mean(monte_carlo_js_divergence(mu_prior, logvar_prior, mu_post, logvar_post, num_samples))
    if name == "kl":
        return batch_mean(gaussian_kl(mu_post, logvar_post, mu_prior, logvar_prior, kl_form))
    raise ValueError(f"shared divergence must be one of {SHARED_DIVERGENCES}, got '{name}'")


def difference_loss(codes_a: torch.Tensor, codes_b: torch.Tensor) -> torch.Tensor:
    """DSN difference (soft orthogonality) loss between two code matrices ``[N, Da]``, ``[N, Db]``.

    Each matrix is centred over the batch and each row divided by its (detached) L2 norm + 1e-6;
    the loss is the mean squared entry of the ``[Da, Db]`` cross-correlation ``Âᵀ·B̂``. It is zero
    when the centred codes are orthogonal and grows with their correlation. Under DDP the batch is
    the global one (every rank's rows, :func:`~avseg.losses.reduction.gather_for_loss`): per-rank
    centring would change the loss, and make it 0 for a rank holding one row.
    """
    def normalised(codes: torch.Tensor) -> torch.Tensor:
        codes = codes.flatten(1)
        codes = codes - codes.mean(dim=0, keepdim=True)
        return codes / (codes.norm(dim=1, keepdim=True).detach() + 1e-6)

    return (normalised(gather_for_loss(codes_a)).t() @ normalised(gather_for_loss(codes_b))).pow(2).mean()


def ba_log_likelihood(mu: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor, form: str = "released") -> torch.Tensor:
    """Barber–Agakov log-likelihood ``E[log q(target | source)]`` with a Gaussian ``q``: scalar.

    ``mu``, ``logvar`` (``[N, D]``) parameterise ``q`` from the source code; ``target`` is the other
    code. The MI lower bound is ``H(target) + E[log q]``, so the objective *maximises* this value
    (ECMVAE's total loss subtracts ``mi_weight ·`` it). ``form="released"`` keeps only the
    data term ``Σ_d −½(μ_d − t_d)² / exp(ℓ_d)`` as MMVAE-AVS does; ``form="gaussian"`` is the full
    Gaussian log-density (adds ``−½ℓ_d − ½ log 2π``). Sum over ``D``, mean over ``N`` (the global batch).
    """
    if form not in MI_FORMS:
        raise ValueError(f"MI form must be one of {MI_FORMS}, got '{form}'")
    log_lik = -0.5 * (mu - target).pow(2) * torch.exp(-logvar)
    if form == "gaussian":
        log_lik = log_lik - 0.5 * logvar - 0.5 * _LOG_2PI
    return batch_mean(log_lik.sum(dim=-1))
