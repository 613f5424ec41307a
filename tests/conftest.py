import os

import pytest
import torch

# Tests never touch the network: make Hugging Face / timm stay offline even if a
# test asks for pretrained weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests use tiny tensors, for which one intra-op thread is much faster
    (and steadier on a busy 2-core machine) than several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
