"""The ``seriesflow`` command's entry point: its modules imported with no garbage collection,
and a one-shot command ended without the interpreter's teardown.

Importing the command's modules (pydicom, numpy, pydantic, typer, ours) creates a few
hundred thousand long-lived objects and no garbage. With Python's cyclic garbage collector
running, those imports ran young collections and a full one that walked all of them: a
tenth of the import time. So the collector is paused while they load, and
:func:`seriesflow.cli.main` resumes it once what start-up loaded is frozen out of it
(:func:`seriesflow.cli.tune_garbage_collection`).

An operator command (``process``, ``select``, ...) has written and closed everything it
writes when it returns. The interpreter would then free every object one by one and clear
every module: 40-60 ms, a twentieth of ``seriesflow process`` on a CT. So once the command
has returned, the logs are flushed and closed, the standard streams flushed, and the
process ends with the command's exit status at once (:func:`_exit_at_once`). The service
commands end as Python ends them (they stop threads and child processes on the way).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from contextlib import suppress
from typing import NoReturn


def main() -> None:
    gc.disable()  # resumed by tune_garbage_collection(), after start-up's objects are frozen
    try:
        from seriesflow.cli import main as cli_main
        from seriesflow.cli import operator_command
    except BaseException:
        gc.enable()
        raise
    if not operator_command():
        cli_main()
        return
    try:
        cli_main()
    except SystemExit as exc:
        _exit_at_once(exc.code)
    _exit_at_once(0)


def _exit_at_once(code: object) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, without the interpreter's teardown."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): the message on stderr, status 1
        print(code, file=sys.stderr)
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(status & 0xFF)
