"""Fault injection points for the crash and resume tests (RELIABILITY.md, faults 1 and 2).

Production code calls `fault_point(name)` at the instants where a crash is most dangerous. Nothing
happens unless the environment variable MTKD_CACHE_FAULT is set to `NAME:N[:ACTION]`: on the N-th hit
of point NAME the process kills itself with SIGKILL (ACTION `kill`, the default) or raises
`InjectedFault` (ACTION `raise`). Under torchrun, MTKD_CACHE_FAULT_RANK=R limits the fault to rank R.
Tests use it to crash a build, a distillation or a sweep at a chosen point deterministically.
"""

import os
import signal
from collections import Counter

_hits: Counter[str] = Counter()


class InjectedFault(RuntimeError):
    """Raised at a fault point when the test asked for an exception rather than a kill."""


def fault_point(name: str) -> None:
    spec = os.environ.get("MTKD_CACHE_FAULT")
    if not spec:
        return
    target, count, *action = spec.split(":")
    if target != name:
        return
    only_rank = os.environ.get("MTKD_CACHE_FAULT_RANK")
    if only_rank is not None and only_rank != os.environ.get("RANK", "0"):
        return
    _hits[name] += 1
    if _hits[name] != int(count):
        return
    if action and action[0] == "raise":
        raise InjectedFault(f"injected fault at {name} (hit {count})")
    os.kill(os.getpid(), signal.SIGKILL)
