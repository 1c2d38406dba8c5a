"""Property-based tests: the parser never raises, and round-trips what it accepts."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyinit.cmdline import Options, join, parse, parse_bytes, split

KEYS = ["root", "rootfstype", "rootflags", "ro", "rw", "init", "rootwait", "rootdelay",
        "rd.timeout", "rd.break", "rd.shell", "rd.emergency", "panic", "quiet", "loglevel",
        "module_blacklist", "modprobe.blacklist", "rd.driver.pre", "pyinit.log", "fsck.mode",
        "console", "--"]
VALUES = st.one_of(
    st.sampled_from(["", "0", "1", "5", "-1", "2.5", "nan", "inf", "UUID=abc", "LABEL=x y",
                     "PARTUUID=ab-01/PARTNROFF=1", "/dev/vda1", "8:1", "fe00", "mount",
                     "shell", "poweroff", "json", "/sbin/init", "a,b-c", '"', "--"]),
    st.text(max_size=12),
)


@st.composite
def command_lines(draw: st.DrawFn) -> str:
    words = []
    for _ in range(draw(st.integers(0, 12))):
        key = draw(st.sampled_from(KEYS))
        if draw(st.booleans()):
            words.append(f"{key}={draw(VALUES)}")
        else:
            words.append(key)
    return " ".join(words)


# What these tests check is the parser, not how fast inputs are made: on a loaded machine
# (qemu boots beside them) generation can be slow, and that must not fail CI.
UNTIMED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def semantic(options: Options) -> Options:
    return options._replace(raw={}, params=(), errors=(), warnings=())


@settings(UNTIMED, max_examples=400)
@given(st.binary(max_size=600))
def test_never_raises_on_any_bytes(data: bytes) -> None:
    options = parse_bytes(data)
    assert isinstance(options, Options)


@settings(UNTIMED, max_examples=400)
@given(command_lines())
def test_never_raises_on_near_miss_lines(text: str) -> None:
    assert isinstance(parse(text), Options)


@settings(UNTIMED, max_examples=400)
@given(command_lines())
def test_round_trips_what_it_accepts(text: str) -> None:
    options = parse(text)
    again = parse(options.to_cmdline())
    assert again.errors == () and again.warnings == ()
    assert semantic(again) == semantic(options)


@settings(UNTIMED, max_examples=300)
@given(st.text(alphabet="ab=-_.,/:\t\n é\u00a0\u2028" + "x" * 5, max_size=80))
def test_split_and_join_round_trip(text: str) -> None:
    params, args = split(text)
    assert split(join(params, args)) == (params, args)
