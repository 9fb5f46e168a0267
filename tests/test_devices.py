"""Where the host trains: a device this machine has, or a one-line error naming the parameter."""

import pytest
import torch

from edgecl.errors import EdgeclError
from edgecl.host.devices import resolve_device


def test_device_names_a_gpu_this_machine_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == "cuda:0" and resolve_device("cuda") == "cuda" and resolve_device(None) == "cuda"
    with pytest.raises(EdgeclError, match=r"device cuda:1: this machine has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:1")
    with pytest.raises(EdgeclError, match="device gpu: not a device"):
        resolve_device("gpu")


def test_without_a_gpu_the_default_is_the_cpu_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == "cpu"
    with pytest.raises(EdgeclError, match="device cuda: CUDA is not available on this machine"):
        resolve_device("cuda")
