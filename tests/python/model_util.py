"""A tiny deterministic model and data set shared by the torch tests."""

import copy

import numpy as np
import torch

from optd import reference


def make_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.Tanh(),
                                torch.nn.Linear(128, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 1))
    return model.to(dtype)


def make_data(seed=1, n=256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    w = torch.randn(32, 1, generator=g)
    y = torch.sin(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def loss_of(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def train_reference(model, x, y, steps, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                    weight_decay=1e-2, lr_at=None):
    """Trains `model` in place with optd.reference; returns the losses."""
    opt = reference.PagedAdamW8bit(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    params = list(model.parameters())
    losses = []
    for k in range(steps):
        model.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        losses.append(loss.item())
        views = {f"p{i}": p.data.numpy() for i, p in enumerate(params)}
        grads = {f"p{i}": p.grad.numpy() for i, p in enumerate(params)}
        opt.step(views, grads, lr=None if lr_at is None else lr_at(k))
    return losses


def flat_params(model):
    return np.concatenate([p.detach().cpu().double().numpy().reshape(-1)
                           for p in model.parameters()])


def free_running_metric(got, want, initial):
    return np.linalg.norm(got - want) / np.linalg.norm(want - initial)


def clone(model):
    return copy.deepcopy(model)


def train_through_optd(target, transport, device="cpu", steps=5, dtype=torch.float32):
    """Trains the tiny model through optd.torch over `transport` on `device`; returns the final
    parameters and the transport the optimizer ended up with."""
    import optd.torch  # noqa: PLC0415 (only the tests that train need it)
    model = make_model(dtype=dtype).to(device)
    x, y = make_data()
    x, y = x.to(device), y.to(device)
    opt = optd.torch.PagedAdamW8bit(model.parameters(), lr=1e-2, target=target,
                                    transport=transport, min_8bit_size=1024)
    for _ in range(steps):
        opt.zero_grad()
        # mse on the fp32 output: torch 1.13 has no bf16 mse on the CPU.
        torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y).backward()
        opt.step()
    got = [p.detach().clone() for p in model.parameters()]
    chosen = opt.transport
    opt.close()
    return got, chosen
