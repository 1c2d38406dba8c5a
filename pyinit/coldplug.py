"""Coldplug: the modules for the devices that exist when the init starts, by MODALIAS."""

from __future__ import annotations

import os
from collections.abc import Container

from pyinit.kmod import Loader


def sysfs_modaliases(sys: str = "/sys", known: Container[str] = ()) -> dict[str, str]:
    """BUS/DEVICE -> modalias ("" for none) of every device on every bus, except KNOWN."""
    found: dict[str, str] = {}
    try:
        buses = sorted(os.listdir(f"{sys}/bus"))
    except OSError:
        return found
    for bus in buses:
        directory = f"{sys}/bus/{bus}/devices"
        try:
            devices = sorted(os.listdir(directory))
        except OSError:
            continue
        for device in devices:
            if f"{bus}/{device}" in known:
                continue
            try:
                with open(f"{directory}/{device}/modalias", encoding="ascii",
                          errors="replace") as fh:
                    found[f"{bus}/{device}"] = fh.read().strip()
            except OSError:
                found[f"{bus}/{device}"] = ""
    return found


def coldplug(loader: Loader, sys: str = "/sys",
             seen: dict[str, str] | None = None) -> tuple[int, int]:
    """Load the modules every existing device's MODALIAS names, read straight from sysfs
    (a pyudev enumeration of every device costs ~0.4 s of guest time under TCG). A bus
    driver's probe adds devices on another bus (virtio_pci's on the virtio bus): the scan
    repeats, for the new devices only, while a pass loads modules, so their drivers load
    here instead of when their uevents come through.

    SEEN (bus/device -> modalias) holds what an earlier pass handled; it is updated.
    Returns (bus devices seen, devices with a MODALIAS)."""
    seen = {} if seen is None else seen
    while True:
        before = len(loader.loaded_here)
        fresh = sysfs_modaliases(sys, known=seen)
        seen.update(fresh)
        for modalias in fresh.values():
            if modalias:
                loader.load_for_modalias(modalias)
        if len(loader.loaded_here) == before:
            return len(seen), sum(1 for m in seen.values() if m)
