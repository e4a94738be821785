"""ECMVAE latent losses against independent formulas on small tensors (float64)."""
import math

import pytest
import torch

from avseg.losses.latent import (
    ba_log_likelihood,
    difference_loss,
    gaussian_kl,
    monte_carlo_js_divergence,
    released_js_divergence,
    shared_code_divergence,
)


def _gaussians(n=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu_q, mu_p = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    lv_q = 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    lv_p = 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return mu_q, lv_q, mu_p, lv_p


def _log_normal(x, mu, logvar):
    return -0.5 * ((x - mu) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))


def test_analytic_kl_matches_monte_carlo():
    mu_q, lv_q, mu_p, lv_p = _gaussians()
    g = torch.Generator().manual_seed(1)
    x = mu_q + torch.randn((400_000,) + mu_q.shape, generator=g, dtype=torch.float64) * (0.5 * lv_q).exp()
    mc = (_log_normal(x, mu_q, lv_q) - _log_normal(x, mu_p, lv_p)).sum(-1).mean(0)
    analytic = gaussian_kl(mu_q, lv_q, mu_p, lv_p)
    assert analytic.shape == (3,)
    assert torch.allclose(analytic, mc, atol=0.03 * (1 + analytic.abs().max()))
    assert torch.allclose(gaussian_kl(mu_q, lv_q, mu_q, lv_q), torch.zeros(3, dtype=torch.float64))


def test_released_kl_uses_exp_logvar_as_std():
    mu_q, lv_q, mu_p, lv_p = _gaussians()
    std_q, std_p = lv_q.exp(), lv_p.exp()  # the released quirk
    expected = (torch.log(std_p / std_q) + (std_q ** 2 + (mu_q - mu_p) ** 2) / (2 * std_p ** 2) - 0.5).sum(-1)
    assert torch.allclose(gaussian_kl(mu_q, lv_q, mu_p, lv_p, form="released"), expected)
    with pytest.raises(ValueError, match="KL form"):
        gaussian_kl(mu_q, lv_q, mu_p, lv_p, form="other")


def test_monte_carlo_js_matches_quadrature_in_one_dimension():
    mu_p, lv_p = torch.tensor([[0.0]], dtype=torch.float64), torch.tensor([[0.0]], dtype=torch.float64)
    mu_q, lv_q = torch.tensor([[1.5]], dtype=torch.float64), torch.tensor([[math.log(0.25)]], dtype=torch.float64)
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    p, q = _log_normal(grid, mu_p[0, 0], lv_p[0, 0]).exp(), _log_normal(grid, mu_q[0, 0], lv_q[0, 0]).exp()
    m = 0.5 * (p + q)
    integrand = 0.5 * (p * torch.log(p / m) + q * torch.log(q / m))
    exact = torch.trapezoid(torch.nan_to_num(integrand), grid)
    torch.manual_seed(0)
    estimate = monte_carlo_js_divergence(mu_p, lv_p, mu_q, lv_q, num_samples=100_000)
    assert abs(estimate.item() - exact.item()) < 0.01
    assert 0.0 < estimate.item() < math.log(2)
    same = monte_carlo_js_divergence(mu_p, lv_p, mu_p, lv_p, num_samples=16)
    assert torch.allclose(same, torch.zeros(1, dtype=torch.float64), atol=1e-12)


def test_released_js_matches_its_formula():
    mu_q, lv_q, mu_p, lv_p = _gaussians(n=5, d=3)
    draws = torch.Generator().manual_seed(7)
    eps_p = torch.randn(mu_p.shape, generator=draws, dtype=torch.float64)
    eps_q = torch.randn(mu_q.shape, generator=draws, dtype=torch.float64)
    p = _log_normal(mu_p + eps_p * (0.5 * lv_p).exp(), mu_p, lv_p).exp()
    q = _log_normal(mu_q + eps_q * (0.5 * lv_q).exp(), mu_q, lv_q).exp()
    m = 0.5 * (p + q)
    expected = 0.5 * ((p * (p / m).log()).sum() + (q * (q / m).log()).sum()) / 5
    value = released_js_divergence(mu_p, lv_p, mu_q, lv_q, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(value, expected)


def test_shared_code_divergence_dispatch_and_gradients():
    mu_q, lv_q, mu_p, lv_p = (t.clone().requires_grad_() for t in _gaussians())
    for name in ("js_released", "js_mc", "kl"):
        value = shared_code_divergence(name, mu_p, lv_p, mu_q, lv_q, num_samples=4)
        assert value.dim() == 0 and torch.isfinite(value)
        grads = torch.autograd.grad(value, [mu_p, mu_q])
        assert all(g.abs().sum() > 0 for g in grads)
    expected_kl = gaussian_kl(mu_q, lv_q, mu_p, lv_p).mean()
    assert torch.allclose(shared_code_divergence("kl", mu_p, lv_p, mu_q, lv_q), expected_kl)
    with pytest.raises(ValueError, match="shared divergence"):
        shared_code_divergence("mmd", mu_p, lv_p, mu_q, lv_q)


def _hadamard(n):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _difference_reference(a, b):
    a = a - a.mean(0, keepdim=True)
    b = b - b.mean(0, keepdim=True)
    total = 0.0
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            total += sum(a[n, i] * b[n, j] / ((a[n].norm() + 1e-6) * (b[n].norm() + 1e-6)) for n in range(a.shape[0])) ** 2
    return total / (a.shape[1] * b.shape[1])


def test_difference_loss_zero_for_orthogonal_codes_and_positive_otherwise():
    h = _hadamard(8)  # columns 1..7 have zero batch mean and are mutually orthogonal
    codes_a, codes_b = 0.7 * h[:, 1:4], 2.0 * h[:, 4:8]
    assert difference_loss(codes_a, codes_b).item() < 1e-20
    g = torch.Generator().manual_seed(3)
    correlated = codes_a @ torch.randn(3, 4, generator=g, dtype=torch.float64) + 0.1 * torch.randn(8, 4, generator=g, dtype=torch.float64)
    assert difference_loss(codes_a, correlated).item() > 1e-2
    a, b = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(difference_loss(a, b), torch.as_tensor(_difference_reference(a, b)))


def test_ba_log_likelihood_formula_and_sign():
    g = torch.Generator().manual_seed(4)
    mu, logvar, target = (torch.tanh(torch.randn(5, 6, generator=g, dtype=torch.float64)) for _ in range(3))
    released = (-0.5 * (mu - target) ** 2 / logvar.exp()).sum(-1).mean()
    assert torch.allclose(ba_log_likelihood(mu, logvar, target), released)
    full = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(target).sum(-1).mean()
    assert torch.allclose(ba_log_likelihood(mu, logvar, target, form="gaussian"), full)
    # a log-likelihood: largest (zero, released form) when the prediction hits the target
    assert ba_log_likelihood(target, logvar, target).item() == 0.0
    assert ba_log_likelihood(mu, logvar, target).item() < 0.0
