from __future__ import annotations

import pytest

from pyinit.cmdline import Options, amend, join, parse, parse_bytes, split
from pyinit.rootspec import RootSpec, RootSpecError, parse_root


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/dev/vda1", RootSpec("path", "/dev/vda1")),
        ("vda1", RootSpec("path", "/dev/vda1")),
        ("UUID=0A1B-2C3D", RootSpec("uuid", "0a1b-2c3d")),
        ("uuid=e35c6088-7b83-436e-897a-5c62166b8fbf",
         RootSpec("uuid", "e35c6088-7b83-436e-897a-5c62166b8fbf")),
        ("LABEL=My_Root", RootSpec("label", "My_Root")),
        ("LABEL=CaseKept", RootSpec("label", "CaseKept")),
        ("PARTUUID=ABCD-01", RootSpec("partuuid", "abcd-01")),
        ("PARTUUID=abcd-01/PARTNROFF=1", RootSpec("partuuid", "abcd-01", 1)),
        ("PARTUUID=abcd-01/partnroff=-2", RootSpec("partuuid", "abcd-01", -2)),
        ("PARTLABEL=root-a", RootSpec("partlabel", "root-a")),
        ("8:1", RootSpec("devnum", "8:1", devnum=(8, 1))),
        ("259:65536", RootSpec("devnum", "259:65536", devnum=(259, 65536))),
        ("0801", RootSpec("devnum", "0801", devnum=(8, 1))),
        ("fe00", RootSpec("devnum", "fe00", devnum=(254, 0))),
        ("/dev/disk/by-uuid/0a1b", RootSpec("uuid", "0a1b")),
        ("/dev/disk/by-label/my\\x20root", RootSpec("label", "my root")),
        ("/dev/disk/by-partuuid/abcd-01", RootSpec("partuuid", "abcd-01")),
        ("/dev/disk/by-partlabel/root-a", RootSpec("partlabel", "root-a")),
        ("/dev/disk/by-path/pci-0000:00:04.0",
         RootSpec("path", "/dev/disk/by-path/pci-0000:00:04.0")),
        ("/dev/mapper/vg-root", RootSpec("path", "/dev/mapper/vg-root")),
    ],
)
def test_every_root_form(value: str, expected: RootSpec) -> None:
    assert parse_root(value) == expected
    assert parse(f"root={value}").root == expected


def test_quoted_label_with_spaces() -> None:
    assert parse('root="LABEL=My Root" ro').root == RootSpec("label", "My Root")
    assert parse('root=LABEL="My Root"').root == RootSpec("label", "My Root")


@pytest.mark.parametrize("value", ["", "UUID=", "PARTUUID=x/y", "/dev/", "LABEL=", "!!",
                                   "/dev/disk/by-uuid/"])
def test_bad_root_is_a_clear_error(value: str) -> None:
    with pytest.raises(RootSpecError, match="expected"):
        parse_root(value)
    options = parse(f"root={value}")
    assert options.root is None
    assert len(options.errors) == 1 and options.errors[0].startswith(f"root={value}")


def test_split_follows_the_kernel() -> None:
    assert split('a  b="c d"\t"e=f g"\n') == (["a", "b=c d", "e=f g"], [])
    assert split("a -- b c") == (["a"], ["b", "c"])
    assert split('a -- "b c" d') == (["a"], ["b c", "d"])
    assert split("") == ([], [])
    assert split("a --") == (["a"], [])
    assert split("a b--c") == (["a", "b--c"], [])


def test_init_arguments_after_double_dash() -> None:
    options = parse("root=/dev/vda init=/bin/sh -- single --debug 'x'")
    assert options.init == "/bin/sh"
    assert options.init_args == ("single", "--debug", "'x'")


def test_repeated_keys_last_wins() -> None:
    options = parse("root=/dev/vda root=UUID=abc ro rw rootfstype=xfs rootfstype=ext4 "
                    "rd.timeout=5 rd.timeout=7")
    assert options.root == RootSpec("uuid", "abc")
    assert options.read_only is False
    assert options.rootfstype == "ext4"
    assert options.timeout == 7
    assert parse("rw ro").read_only is True


def test_defaults() -> None:
    options = parse("")
    assert options == Options(raw={})
    assert options.read_only is True  # the kernel's default
    assert options.timeout == 60
    assert options.emergency == "shell"
    assert options.shell is True


def test_lists_accumulate() -> None:
    options = parse("module_blacklist=a,b-c modprobe.blacklist=d rd.driver.pre=x,y "
                    "rd.driver.pre=y,z rd.break=mount rd.break=discover")
    assert options.blacklist == {"a", "b_c", "d"}
    assert options.driver_pre == ("x", "y", "z")
    assert options.breaks == {"mount", "discover"}
    assert parse("rd.break").breaks == {"switch_root"}


def test_other_options() -> None:
    options = parse("rootwait rootdelay=2.5 rootflags=data=journal,noatime rd.shell=0 "
                    "rd.emergency=poweroff panic=10 quiet loglevel=3 pyinit.log=json")
    assert options.rootwait and options.rootdelay == 2.5
    assert options.rootflags == "data=journal,noatime"
    assert options.shell is False and options.emergency == "poweroff"
    assert options.panic == 10 and options.quiet
    assert options.raw["loglevel"] == "3"  # the kernel's, not pyinit's
    assert options.log_format == "json"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("init=sbin/init", "init=sbin/init: expected an absolute path"),
        ("init=", "init= is empty: expected a value"),
        ("root=UUID=", "root=UUID=: expected a value after UUID="),
    ],
)
def test_bad_values_that_decide_what_boots_are_errors(text: str, message: str) -> None:
    options = parse(f"ro {text} rd.shell=0")
    assert options.errors == (message,), options.errors
    assert options.warnings == ()
    # The rest of the line still counts: the failure path needs rd.shell/rd.emergency.
    assert options.shell is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rootdelay=abc", "rootdelay=abc: expected a number of seconds; ignored, rootdelay "
                          "stays 0"),
        ("rd.timeout=-1", "rd.timeout=-1: expected a number >= 0; ignored, rd.timeout stays 60"),
        ("rd.timeout=nan", "rd.timeout=nan: expected a number >= 0; ignored, rd.timeout stays "
                           "60"),
        ("rd.emergency=explode", "rd.emergency=explode: expected one of shell, reboot, "
                                 "poweroff, halt; ignored, rd.emergency stays shell"),
        ("rd.break=nowhere", "rd.break=nowhere: expected one of cmdline, modules, discover, "
                             "mount, switch_root; ignored, rd.break stays none"),
        ("rd.shell=maybe", "rd.shell=maybe: expected 0 or 1; ignored, rd.shell stays 0"),
        ("panic=soon", "panic=soon: expected a whole number; ignored, panic stays unset"),
        ("rootfstype=", "rootfstype= is empty: expected a value; ignored, rootfstype stays "
                        "unset"),
        ("rootflags=", "rootflags= is empty: expected a value; ignored, rootflags stays "
                       "unset"),
        ("pyinit.log=xml", "pyinit.log=xml: expected one of pretty, json; ignored, pyinit.log "
                           "stays pretty"),
    ],
)
def test_bad_optional_values_are_warnings_and_keep_defaults(text: str, message: str) -> None:
    options = parse(f"ro rd.shell=0 {text}")
    assert options.errors == ()
    assert options.warnings == (message,)


def test_a_bad_value_keeps_the_previous_good_one() -> None:
    options = parse("rd.timeout=5 rd.timeout=abc")
    assert options.timeout == 5
    assert options.warnings == ("rd.timeout=abc: expected a number of seconds; ignored, "
                                "rd.timeout stays 5",)


def test_amend_appends_parameters_and_keeps_init_arguments() -> None:
    options = parse("root=LABEL=wrong rd.shell=0 -- single")
    fixed = amend(options, "root=UUID=abc rw")
    assert fixed.root == RootSpec("uuid", "abc")
    assert fixed.read_only is False and fixed.shell is False
    assert fixed.init_args == ("single",)


def test_join_is_the_inverse_of_split() -> None:
    params, args = split('a "b c" d=e -- "x y" z')
    assert split(join(params, args)) == (params, args)


def test_garbage_bytes_and_long_lines_do_not_raise() -> None:
    options = parse_bytes(b"root=\xff\xfe\x00 rd.timeout=\x80 " + b"x" * 4096 + b' "unbalanced')
    # root= decides what boots: its bad value is an error; a bad timeout only a warning
    assert [e for e in options.errors if e.startswith("root=")] and len(options.errors) == 1
    assert [w for w in options.warnings if w.startswith("rd.timeout=")]
    assert parse_bytes(b"\0\0\0").errors == ()


def test_unknown_keys_are_kept_raw_and_ignored() -> None:
    options = parse("console=ttyS0,115200 foo bar=baz")
    assert options.raw == {"console": "ttyS0,115200", "foo": None, "bar": "baz"}


def test_kernel_keys_and_unknown_keys_are_left_alone() -> None:
    # loglevel= is the kernel's (a bad value is its business), the rest nobody's here: the
    # kernel ignores them too, and none may stop the boot nor warn.
    options = parse("root=/dev/vda loglevel=x nosuchkey=1 foo.bar rd.nosuch=2 quiet")
    assert options.errors == () and options.warnings == ()
