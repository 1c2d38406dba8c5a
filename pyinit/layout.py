"""Facts the builder and the init both name: where things sit in the image.

Pure data, no imports: the builder reads it without loading the cffi module, and the init
reads it without paying for anything but the names.
"""

SITE = "/usr/lib/pyinit"  # pyinit and its third-party packages, as pycs
SYSROOT = "/sysroot"  # where the real root is mounted before the hand-over
API_MOUNTS = ("/dev", "/proc", "/sys", "/run")  # moved into the real root at the hand-over
API_DIRS = (*API_MOUNTS, SYSROOT, "/tmp")  # directories every image has
DEFAULT_CMDLINE = "/etc/pyinit/cmdline"  # options the builder baked in; the kernel's line wins
MODULES_DIR = "/lib/modules"  # + KVER: the kernel's modules and pyinit's index of them
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # PATH for the tools and shells the init runs
# The shells the failure path looks for (rootfs-skel/init, which runs before pyinit can be
# imported, keeps its own short list).
SHELLS = ("/bin/sh", "/usr/bin/sh", "/bin/busybox")
RUN_DIR = "/run/initramfs"  # survives the move of /run into the real root
LOG_FILE = RUN_DIR + "/pyinit.log"
# Written when a storage stack made dm or md devices: the shutdown unit unpacks the image
# into RUN_DIR for systemd-shutdown (RUN_DIR/shutdown) only then.
STORAGE_ACTIVE = RUN_DIR + "/storage-active"
SHUTDOWN = "/shutdown"  # in the image; RUN_DIR + SHUTDOWN once unpacked there

# systemd-udevd, when the image carries it.
UDEVD = "/lib/systemd/systemd-udevd"
UDEVADM = "/bin/udevadm"
UDEV_CONTROL = "/run/udev/control"
UDEV_RULES_DIR = "/lib/udev/rules.d"
# When the init starts udevd: "always" (at the modules stage: --udev systemd), or "storage"
# (only once a storage stack is about to create dm or md devices, so that their udev
# database entries exist for a systemd root). No file: never.
UDEV_MODE_FILE = "/etc/pyinit/udev"
UDEV_MODES = ("always", "storage")
STORAGE_FILE = "/etc/pyinit/storage"  # the storage stacks the image carries, one a line
# Each storage stack's command-line keys (KEY, KEY=..., KEY.SUB=...): the init checks them
# even in an image that carries no stack, without importing pyinit.storage for a plain root.
STORAGE_KEYS = {"luks": ("rd.luks", "luks"), "lvm": ("rd.lvm",), "mdraid": ("rd.md",),
                "btrfs": ()}
# The overlay's command-line keys: only a line that has one imports pyinit.overlay.
OVERLAY_KEYS = ("rd.overlay", "overlayroot", "systemd.volatile")
# dm-verity's command-line keys: only a line that has one imports pyinit.verity (which
# refuses the /usr ones).
VERITY_USR_KEYS = ("usrhash", "systemd.verity_usr_data", "systemd.verity_usr_hash",
                   "systemd.verity_usr_options")
VERITY_KEYS = ("roothash", "systemd.verity", "rd.systemd.verity", "systemd.verity_root_data",
               "systemd.verity_root_hash", "systemd.verity_root_options", *VERITY_USR_KEYS)
