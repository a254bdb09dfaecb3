"""The calling thread's alternate signal stack, kept across calls into a runtime that changes it.

OpenVINO's CPU plugin installs an alternate signal stack (sigaltstack) on the thread that compiles or runs a
graph and leaves it there after its memory is gone. Python runs its signal handlers' C part on the
alternate stack, so the next Ctrl-C or SIGTERM delivered to that thread crashed the process with SIGSEGV
inside kill() instead of reaching the handler (seen with `infer --backend openvino`, and under pytest,
whose faulthandler had its own stack replaced). `kept_signal_stack()` puts the thread's own setting back.
"""
import contextlib
import ctypes
import sys
from functools import lru_cache
from typing import Iterator, Optional

SS_ONSTACK, SS_DISABLE = 1, 2  # <signal.h>


class _Stack(ctypes.Structure):  # stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@lru_cache(maxsize=1)
def _libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sigaltstack.argtypes = [ctypes.POINTER(_Stack), ctypes.POINTER(_Stack)]
        return libc
    except (OSError, AttributeError):
        return None


def current() -> Optional[tuple]:
    """(address, size, disabled) of this thread's alternate signal stack; None where it cannot be read."""
    libc, now = _libc(), _Stack()
    if libc is None or libc.sigaltstack(None, ctypes.byref(now)) != 0:
        return None
    return now.ss_sp or 0, now.ss_size, bool(now.ss_flags & SS_DISABLE)


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the block, then give this thread back the alternate signal stack it had before it (or none)."""
    libc, before = _libc(), _Stack()
    if libc is None or libc.sigaltstack(None, ctypes.byref(before)) != 0 or before.ss_flags & SS_ONSTACK:
        yield  # not Linux, or inside a signal handler: nothing to keep
        return
    try:
        yield
    finally:
        after = _Stack()
        if libc.sigaltstack(None, ctypes.byref(after)) == 0 and not after.ss_flags & SS_ONSTACK and (
                (after.ss_sp, after.ss_size, after.ss_flags) != (before.ss_sp, before.ss_size, before.ss_flags)):
            restore = _Stack(before.ss_sp, before.ss_flags & SS_DISABLE, before.ss_size)
            libc.sigaltstack(ctypes.byref(restore), None)
