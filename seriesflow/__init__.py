"""The ``seriesflow`` command line: operator mode and the services' entry points."""
