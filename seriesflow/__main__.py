"""``python -m seriesflow``: the same as the ``seriesflow`` command."""

from seriesflow.cli import main

main()
