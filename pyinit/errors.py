"""The one base of the failures the init expects: bad input, a missing device, a tool or a
kernel call that failed. The failure path shows such an error as its one line (the stage,
what was expected, what was found, what to try). Anything else raised on the way is a bug
in pyinit: it keeps its traceback, on the console and in the log, before the same path.

OSError stays expected too: it is how the kernel says no, and pyinit's wrappers name the
call and the path in it.
"""


class BootError(Exception):
    """A failure the init expected; its message names what was expected and found, and
    ``hint`` (when set) what to try."""

    hint: str | None = None


EXPECTED = (BootError, OSError)
