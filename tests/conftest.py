"""Fixtures shared by every test package."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Every test leaves torch's thread count as it found it (training runs in this process set it)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
