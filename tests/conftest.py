import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two OpenMP threads on two busy cores run the tiny test models several times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
