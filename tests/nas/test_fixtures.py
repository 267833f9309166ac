"""The compatibility contract with the official code: both reference fixtures."""
from __future__ import annotations

import pytest
import torch

from relnas import Genotype, build_network
from relnas.nas.profile import count_params

FIXTURES = ["relativenas_cifar_c8_l5.pt", "relativenas_imagenet_c8_l5.pt"]


def _load(reference_dir, name):
    return torch.load(reference_dir / name, weights_only=True)


def _build(cfg):
    return build_network(cfg["network"], Genotype.from_dict(cfg["genotype"]), cfg["C"], cfg["layers"],
                         cfg["num_classes"], auxiliary=cfg["auxiliary"])


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_genotype_is_zoo_entry(reference_dir, name):
    from relnas import get_genotype

    cfg = _load(reference_dir, name)["config"]
    assert Genotype.from_dict(cfg["genotype"]) == get_genotype(cfg["genotype_name"])


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_loads_strict_and_matches_outputs(reference_dir, name):
    fx = _load(reference_dir, name)
    cfg = fx["config"]
    net = _build(cfg)
    result = net.load_state_dict(fx["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert count_params(net, exclude_auxiliary=True) == cfg["params_excluding_auxiliary"]
    x = fx["input"]
    assert x.shape[-1] == cfg["input_hw"]
    net.drop_path_prob = 0.0
    with torch.no_grad():
        net.eval()
        logits, aux = net(x)
        assert aux is None
        assert (logits - fx["logits_eval"]).abs().max().item() < 1e-4
        net.train()
        logits, aux = net(x)
        assert (logits - fx["logits_train"]).abs().max().item() < 1e-4
        assert (aux - fx["logits_aux_train"]).abs().max().item() < 1e-4
