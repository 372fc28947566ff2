"""Errors a user can act on. Entry points print them as one line, never as a traceback."""


class UserError(Exception):
    """Bad input or state the user must fix (missing file, policy=fail triggered, ...)."""
