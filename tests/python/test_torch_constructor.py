"""optd.torch.PagedAdamW8bit's constructor: the reference's signature, defaults and errors.
No server needed: the constructor does not connect."""

import inspect

import pytest
import torch

import optd.torch

T = "127.0.0.1:1"


def params():
    return [torch.nn.Parameter(torch.zeros(10))]


def test_signature_and_defaults_match_the_reference():
    sig = inspect.signature(optd.torch.PagedAdamW8bit.__init__)
    names = list(sig.parameters)[:12]
    assert names == ["self", "params", "lr", "betas", "eps", "weight_decay", "amsgrad",
                     "optim_bits", "args", "min_8bit_size", "percentile_clipping", "block_wise"]
    d = {k: v.default for k, v in sig.parameters.items()}
    assert (d["lr"], d["betas"], d["eps"], d["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-8, 1e-2)
    assert (d["amsgrad"], d["optim_bits"], d["min_8bit_size"]) == (False, 32, 4096)
    assert (d["percentile_clipping"], d["block_wise"]) == (100, True)
    opt = optd.torch.PagedAdamW8bit(params(), target=T)
    g = opt.param_groups[0]
    assert g["lr"] == 1e-3 and g["betas"] == (0.9, 0.999) and g["weight_decay"] == 1e-2


@pytest.mark.parametrize("kwargs,message", [
    (dict(amsgrad=True), "PagedAdamW8bit does not support amsgrad=True"),
    (dict(optim_bits=8), "PagedAdamW8bit only supports optim_bits=32 \\(default value for "
                         "compatibility\\)"),
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
    (dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (dict(betas="(0.9, 1.5)"), "Invalid beta parameter at index 1: 1.5"),
    (dict(weight_decay=-0.5), "Invalid weight_decay value: -0.5"),
    (dict(block_wise=False), "PagedAdamW8bit only supports block_wise=True"),
    (dict(percentile_clipping=0), "Invalid percentile_clipping value: 0"),
    (dict(percentile_clipping=101), "Invalid percentile_clipping value: 101"),
])
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        optd.torch.PagedAdamW8bit(params(), target=T, **kwargs)


def test_amsgrad_is_checked_before_lr_like_the_reference():
    with pytest.raises(ValueError, match="amsgrad"):
        optd.torch.PagedAdamW8bit(params(), lr=-1, amsgrad=True, target=T)


def test_empty_parameter_list_is_torchs_error():
    with pytest.raises(ValueError, match="empty parameter list"):
        optd.torch.PagedAdamW8bit([], target=T)


def test_missing_target_names_the_argument(monkeypatch):
    monkeypatch.delenv("OPTD_TARGET", raising=False)
    with pytest.raises(ValueError, match="^target: "):
        optd.torch.PagedAdamW8bit(params())


def test_unsupported_parameter_dtype_is_named():
    with pytest.raises(ValueError, match="float64"):
        optd.torch.PagedAdamW8bit([torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))],
                                  target=T)
