"""`python -m nexusml.core.exec_guard [--parent PID] [--max-file-bytes N] -- COMMAND...`: set up, then become COMMAND.

What subprocess's `preexec_fn` would do, done in a process of its own before `exec` (see
`nexusml.core.process.guarded` for why): `--parent` asks for the parent-death signal (checking PID is still the
parent), `--max-file-bytes` caps file sizes as a full disk would (writes fail with EFBIG; SIGXFSZ ignored).
Both survive the `exec`. Exit 127 when COMMAND cannot be started, as a shell says.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
from collections.abc import Sequence

from nexusml.core.process import STOP_SIGNALS, die_with_parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nexusml.core.exec_guard")
    parser.add_argument("--parent", type=int, help="pid whose death sends this process PARENT_DEATH_SIGNAL")
    parser.add_argument("--max-file-bytes", type=int, help="RLIMIT_FSIZE for the command")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    # The command starts with the stop signals as a fresh process has them: a parent may hold them blocked
    # (`stop_signals_held`), and a blocked or ignored signal would survive the exec.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if args.parent is not None:
        die_with_parent(args.parent)
    if args.max_file_bytes is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.max_file_bytes, args.max_file_bytes))
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(f"exec_guard: cannot start {command[0]}: {err}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
