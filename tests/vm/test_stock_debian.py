"""The README's set-up on a stock Debian 12: `bash .ci/install` in a debootstrapped bookworm
whose python3 is Debian's own (no pip, externally managed), then an image built there with
the environment it made.

The checkout is copied in (its tracked and new files); apt reaches the machine's Debian
mirror and pip the machine's package index, as on the host. The test kernels come from the
host's cache (bind-mounted), so only their download is skipped: every package, the venv,
pip's install and the cffi build happen inside. All mounts stay in one private mount
namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.vm import debian, kernels

REPO = Path(__file__).resolve().parents[2]
# The machine's pip set-up (its index, wheel directories and the CA bundle it trusts),
# carried in as it is here.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PIP_FILES = ("/etc/pip.conf", "/etc/xdg/pip", CA_BUNDLE)
PIP_DIRS = ("/opt/pypi", "/opt/pypi-more", "/opt/wheels")
TIMEOUT = 1500


def copy_checkout(dest: Path) -> None:
    names = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, check=True).stdout
    for name in sorted({n for n in names.decode().split("\0") if n}):
        source = REPO / name
        if not source.exists():
            continue  # deleted in the work tree, not yet committed
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def run_in(root: Path, command: str) -> subprocess.CompletedProcess[str]:
    """COMMAND as root in ROOT with the machine's network, DNS and pip set-up, the kernel
    cache bound in, and no services started (policy-rc.d)."""
    binds = tuple((d, d) for d in PIP_DIRS if os.path.isdir(d))
    env = {"HOME": "/root", "LANG": "C.UTF-8",
           **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
    return debian.in_chroot(str(root), command, env=env,
                            binds=(*binds, (kernels.CACHE, "/root/.cache/pyinit")),
                            timeout=TIMEOUT)


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stock-debian") / "root"
    debian.unpack(str(root))
    debian.network(str(root))
    for path in PIP_FILES:
        if os.path.isdir(path):
            shutil.copytree(path, root / path.lstrip("/"), dirs_exist_ok=True)
        elif os.path.isfile(path):
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / path.lstrip("/"))
    # ca-certificates, installed on the way, rebuilds the bundle from its own list and from
    # /usr/local/share/ca-certificates: the machine's bundle goes there too, to stay trusted.
    local_ca = root / "usr/local/share/ca-certificates"
    local_ca.mkdir(parents=True, exist_ok=True)
    shutil.copy(CA_BUNDLE, local_ca / "machine-bundle.crt")
    debian.write(str(root), "/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
    copy_checkout(root / "src/pyinit")
    return root


def test_ci_install_then_a_build_on_stock_debian(stock: Path) -> None:
    # What the README's set-up meets there: Debian's python3, no pip, an externally
    # managed environment.
    before = run_in(stock, "readlink -f \"$(command -v python3)\"; python3 -m pip --version; "
                           "ls /usr/lib/python3.11/EXTERNALLY-MANAGED")
    assert before.stdout.startswith("/usr/bin/python3.11"), before.stdout + before.stderr
    assert "No module named pip" in before.stderr
    assert "/usr/lib/python3.11/EXTERNALLY-MANAGED" in before.stdout
    done = run_in(stock, "cd /src/pyinit && bash .ci/install")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    kernel = kernels.load("debian-6.1")
    moddir = "/root/.cache/pyinit/kernels/debian-6.1/lib/modules/" + kernel.kver
    built = run_in(stock, "cd /src/pyinit && .venv/bin/python mkinitramfs.py --kver "
                          f"{kernel.kver} --kmoddir {moddir} -o /tmp/initrd.img && "
                          ".venv/bin/python mkinitramfs.py --list /tmp/initrd.img")
    assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]
    assert "usr/lib/pyinit/pyinit/init.pyc" in built.stdout
    assert "_syscalls" in built.stdout  # the cffi module, compiled there against Debian's 3.11


def test_a_pip_failure_stops_ci_install(stock: Path) -> None:
    """pip's errors are not filtered away: a requirement pip cannot meet fails the script
    (before the kernels step) with pip's own message."""
    done = run_in(stock, "cd /src/pyinit && sed -i 's/\"lz4>=3\"/\"lz4>=999\"/' pyproject.toml "
                         "&& bash .ci/install; status=$?;"
                         " sed -i 's/\"lz4>=999\"/\"lz4>=3\"/' pyproject.toml; exit $status")
    assert done.returncode != 0
    assert "lz4>=999" in done.stderr + done.stdout
    assert "debian-6.1:" not in done.stdout  # the kernels step never ran
