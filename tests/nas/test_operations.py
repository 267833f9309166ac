"""Operation-level checks: the parity-phase dilated conv equals the plain dilated conv."""
import pytest
import torch

from relnas.nas import operations
from relnas.nas.operations import DilConv


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [8, 7])
@pytest.mark.parametrize("channels_last", [False, True])
def test_phase_dilated_conv_matches_plain(k, stride, hw, channels_last, monkeypatch):
    torch.manual_seed(0)
    op = DilConv(6, 6, k, stride, k - 1, 2)
    x = torch.randn(3, 6, hw, hw)
    if channels_last:
        op = op.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for phase in (False, True):
        monkeypatch.setattr(operations, "PHASE_DILATED_CONV", phase)
        op.zero_grad()
        xi = x.clone().requires_grad_()
        out = op(xi)
        (out * torch.arange(out.numel()).reshape(out.shape).sin()).sum().backward()
        outs.append(out.detach())
        grads.append((xi.grad.clone(), op.op[1].weight.grad.clone()))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-4)
