"""The network factory, our registered resnet_small, and transfer from a local safetensors file."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from models.networks import ResNetSmall, build_network, load_pretrained
from tasks.common.errors import UserError


@pytest.mark.parametrize("name", ["resnet_small", "resnet_tiny", "resnet_wide"])
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
