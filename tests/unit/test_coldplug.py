"""Coldplug over a sysfs tree: every device's modalias once, again for devices a load adds."""

from __future__ import annotations

from pathlib import Path

from pyinit import coldplug, kmod
from pyinit.modindex import ModuleIndex


def add_device(sysfs: Path, bus: str, name: str, modalias: str | None) -> None:
    device = sysfs / "bus" / bus / "devices" / name
    device.mkdir(parents=True)
    if modalias is not None:
        (device / "modalias").write_text(modalias + "\n")


class BusLoader(kmod.Loader):
    """Records what coldplug asks for; 'loading' virtio_pci adds virtio devices, as the
    real driver's probe does."""

    def __init__(self, sysfs: Path) -> None:
        super().__init__(ModuleIndex(str(sysfs / "no-modules")))
        self.sysfs = sysfs
        self.asked: list[str] = []

    def load_for_modalias(self, modalias: str) -> list[str]:
        self.asked.append(modalias)
        name = {"pci:v00001AF4d00001001": "virtio_pci",
                "virtio:d00000002v00001AF4": "virtio_blk"}.get(modalias)
        if name is None or name in self.loaded_here:
            return []
        self.loaded_here.append(name)
        if name == "virtio_pci":
            add_device(self.sysfs, "virtio", "virtio0", "virtio:d00000002v00001AF4")
            add_device(self.sysfs, "virtio", "virtio1", "virtio:d00000001v00001AF4")
        return [name]


def test_devices_a_load_adds_are_coldplugged_too(tmp_path: Path) -> None:
    add_device(tmp_path, "pci", "0000:00:04.0", "pci:v00001AF4d00001001")
    add_device(tmp_path, "pci", "0000:00:00.0", "pci:v00008086d00001237")
    add_device(tmp_path, "cpu", "cpu0", None)
    loader = BusLoader(tmp_path)
    assert coldplug.coldplug(loader, str(tmp_path)) == (5, 4)
    assert loader.loaded_here == ["virtio_pci", "virtio_blk"]
    # Each device is asked for once, the new bus after the load that made it.
    assert loader.asked == ["pci:v00008086d00001237", "pci:v00001AF4d00001001",
                            "virtio:d00000002v00001AF4", "virtio:d00000001v00001AF4"]


def test_no_sysfs_is_nothing_to_do(tmp_path: Path) -> None:
    loader = BusLoader(tmp_path)
    assert coldplug.coldplug(loader, str(tmp_path / "absent")) == (0, 0)
    assert loader.asked == []


def test_known_devices_are_not_read_again(tmp_path: Path) -> None:
    add_device(tmp_path, "pci", "a", "pci:one")
    add_device(tmp_path, "pci", "b", "pci:two")
    assert coldplug.sysfs_modaliases(str(tmp_path), known={"pci/a"}) == {"pci/b": "pci:two"}
