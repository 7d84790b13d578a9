"""Helpers for parity checks against the reference."""

import torch


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics, so that
    eval-mode parity checks exercise them (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
