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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped namespace or VM test proves nothing: the run fails when one was skipped
    (PYINIT_ALLOW_SKIPS=1 allows it, to look at a partial run on a machine that cannot
    boot)."""
    import os

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or os.environ.get("PYINIT_ALLOW_SKIPS") == "1":
        return
    skipped = [r.nodeid for r in reporter.stats.get("skipped", [])
               if r.nodeid.startswith(("tests/ns/", "tests/vm/"))]
    if skipped:
        reporter.write_line(f"FAILED: {len(skipped)} namespace/VM tests were skipped: "
                            + ", ".join(skipped), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
