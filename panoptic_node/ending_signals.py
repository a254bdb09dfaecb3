"""The signals that ask a job or the node to end, besides Ctrl-C: SIGTERM (`kill`, a scheduler, launch) and
SIGHUP (the terminal or ssh session it ran in closed). Their defaults end Python where it stands, leaving
locks, half-written outputs and Fast DDS segments behind; handled, the job unwinds as Ctrl-C does. A process
started with nohup, which sets SIGHUP ignored to outlive its terminal, keeps ignoring it."""
import signal
from typing import List


def ending_signals() -> List[int]:
    hangup = getattr(signal, "SIGHUP", None)  # not on Windows
    keep_hangup = hangup is not None and signal.getsignal(hangup) is signal.SIG_DFL
    return [signal.SIGTERM] + ([hangup] if keep_hangup else [])
