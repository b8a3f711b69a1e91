"""The ``seriesflow`` command's entry point: its modules imported with no garbage collection.

Importing the command's modules (pydicom, numpy, pydantic, typer, ours) creates a few
hundred thousand long-lived objects and no garbage. With Python's cyclic garbage collector
running, those imports ran young collections and a full one that walked all of them: a
tenth of the import time. So the collector is paused while they load, and
:func:`seriesflow.cli.main` resumes it once what start-up loaded is frozen out of it
(:func:`seriesflow.cli.tune_garbage_collection`).
"""

from __future__ import annotations

import gc


def main() -> None:
    gc.disable()  # resumed by tune_garbage_collection(), after start-up's objects are frozen
    try:
        from seriesflow.cli import main as cli_main
    except BaseException:
        gc.enable()
        raise
    cli_main()
