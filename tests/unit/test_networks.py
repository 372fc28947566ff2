"""The network factory, our registered resnet_small, and transfer from a local safetensors file."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from models.networks import ResNetSmall, build_network, load_pretrained
from tasks.common.errors import UserError


@pytest.mark.parametrize("name", ["resnet_small", "resnet_tiny", "resnet_wide", "resnet_strided"])
@pytest.mark.parametrize("in_chans,size", [(1, 28), (3, 32), (3, 16)])
def test_our_nets_are_in_timms_registry_and_fit_small_images(name, in_chans, size):
    net = timm.create_model(name, num_classes=7, in_chans=in_chans)
    assert isinstance(net, ResNetSmall)
    assert net(torch.zeros(2, in_chans, size, size)).shape == (2, 7)


def test_resnet_tiny_is_half_as_wide():
    small, tiny = build_network("resnet_small", 10, 1), build_network("resnet_tiny", 10, 1)
    assert (small.num_features, tiny.num_features) == (128, 64)
    assert sum(p.numel() for p in tiny.parameters()) < sum(p.numel() for p in small.parameters()) / 3


def test_resnet_wide_is_twice_as_wide():
    small, wide = build_network("resnet_small", 10, 1), build_network("resnet_wide", 10, 1)
    assert (small.num_features, wide.num_features) == (128, 256)
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in small.parameters()) * 3


def conv_multiply_adds(net: torch.nn.Module, size: int) -> int:
    """Multiply-adds of every convolution for one grey size x size image (what sets a CPU step's cost)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        total += output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1] // module.groups

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    net.eval()(torch.zeros(1, 1, size, size))
    for hook in hooks:
        hook.remove()
    return total


def test_resnet_strided_has_small_widths_at_about_tiny_cost():
    small, tiny, strided = (build_network(n, 10, 1) for n in ("resnet_small", "resnet_tiny", "resnet_strided"))
    assert strided.num_features == small.num_features == 128
    # the first stage already halves the image: 28 px in, 14 / 7 / 4 px through the stages
    sizes = [strided.stages[: i + 1](strided.stem(torch.zeros(1, 1, 28, 28))).shape[-1] for i in (0, 2, 4)]
    assert sizes == [14, 7, 4]
    assert conv_multiply_adds(strided, 28) < 1.5 * conv_multiply_adds(tiny, 28)
    assert conv_multiply_adds(strided, 28) < conv_multiply_adds(small, 28) / 2.5


def test_timm_architectures_come_from_the_same_factory():
    net = build_network("resnet10t", num_classes=4, in_chans=1)
    assert net.get_classifier().out_features == 4
    assert net.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 4)


def test_unknown_names_and_downloads_are_refused():
    with pytest.raises(UserError, match="unknown network 'resnet_smol'"):
        build_network("resnet_smol", 3, 1)
    with pytest.raises(UserError, match="nothing is downloaded"):
        build_network("resnet18", 3, 3, pretrained=True)


@pytest.mark.parametrize("prefix", ["", "network."])
def test_pretrained_weights_load_except_a_head_of_another_class_count(tmp_path, prefix):
    source = build_network("resnet_small", num_classes=10, in_chans=1)
    path = tmp_path / "weights.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    target = build_network("resnet_small", num_classes=3, in_chans=1)
    fresh_head = target.fc.weight.detach().clone()
    assert load_pretrained(target, path) == ["fc.bias", "fc.weight"]
    assert torch.equal(target.stem[0].weight, source.stem[0].weight)
    assert torch.equal(target.stages[-1].conv2.weight, source.stages[-1].conv2.weight)
    assert torch.equal(target.fc.weight, fresh_head)


def test_pretrained_through_the_factory_and_bad_files(tmp_path):
    source = build_network("resnet_small", num_classes=3, in_chans=1)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    net = build_network("resnet_small", 3, 1, pretrained=True, pretrained_path=path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), source.state_dict().values()))

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="not a safetensors file"):
        load_pretrained(net, garbage)
    with pytest.raises(UserError, match="not found"):
        load_pretrained(net, tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(UserError, match="no tensor matches"):
        load_pretrained(net, other)
