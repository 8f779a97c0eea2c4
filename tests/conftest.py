import os

import pytest
import torch

# Tiny members on a shared 2-core machine: thread hand-offs cost more than they gain.
torch.set_num_threads(1)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shipped():
    """The shipped default members, loaded once (fp32, CPU)."""
    from tie_lite.runtime.loading import load_member

    return {name: load_member(name) for name in ("tiny-sp", "tiny-bpe")}
