"""One intra-op thread for the Perfusion tests.

Their models are a few channels wide, so threading buys nothing, and on a
shared machine OpenMP's spin-waits made a tiny UNet forward ~100x slower
(1.8 s instead of 15 ms). Scoped to this package and restored afterwards.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
