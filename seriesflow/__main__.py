"""``python -m seriesflow``: the same as the ``seriesflow`` command."""

from seriesflow.launch import main

main()
