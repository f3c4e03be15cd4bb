"""The one exception type the command line turns into a message and exit code 2."""


class CaviarError(Exception):
    """An error whose message tells the user what to fix; the CLI prints it and exits 2."""
