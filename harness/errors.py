"""Errors the CLI turns into one line on stderr and exit code 2 (``--debug`` shows the traceback)."""


class FwbenchError(Exception):
    """A problem the user can fix: bad input, missing data, a refused run folder."""


class DataError(FwbenchError):
    """Missing, corrupted or unreadable data files."""
