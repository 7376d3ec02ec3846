"""One exit-code contract for every mmedge command line (train, export, calibrate, runtime, bench).

- 0: done.
- 1: a bug: an exception that is not an ``MMEdgeError`` propagates with its traceback (Python's
  own exit status for an uncaught exception), so internal errors are never disguised as bad input.
- 2: refused: an ``MMEdgeError`` (bad input or flag, a missing run or file, a bundle that fails
  its checks, a graph that misses its tolerance, a missing optional package) or an argparse usage
  error. The message goes to stderr as ``<prog>: error: <message>``, without a traceback.

Library code raises typed errors and never ``SystemExit``; only these front ends turn an error
into an exit status.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from runtime.errors import MMEdgeError

EXIT_OK = 0
EXIT_BUG = 1
EXIT_REFUSED = 2

EPILOG = ("exit status: 0 done; 2 refused (a typed mmedge error or a usage error: one line on stderr, "
          "no traceback); 1 an internal error (printed with its traceback; please report it)")


def refusal(prog: str, err: BaseException) -> str:
    """The one stderr line (the error's own message may span lines) for a refused command."""
    return f"{prog}: error: {err}"


def run_cli(prog: str, call: Callable[[], int | None]) -> int:
    """``call()``'s exit status; an ``MMEdgeError`` becomes EXIT_REFUSED with its message on stderr.

    Anything else propagates unchanged, so its traceback is printed and the status is 1.
    """
    try:
        return int(call() or 0)
    except MMEdgeError as err:
        print(refusal(prog, err), file=sys.stderr)
        return EXIT_REFUSED
