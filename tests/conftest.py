from __future__ import annotations

import pytest

from tests.vm import kernels


@pytest.fixture(scope="session")
def kernel7() -> kernels.Kernel:
    """Debian unstable's 7.x cloud kernel (fetched into the cache on first use)."""
    return kernels.fetch_7x()


@pytest.fixture(scope="session")
def kernel61() -> kernels.Kernel:
    """Debian 12's 6.1 cloud kernel (fetched into the cache on first use)."""
    return kernels.fetch_61()
