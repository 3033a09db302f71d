"""The one exception type that reaches the user as a single line and exit code 2."""


class UserError(Exception):
    """Something the user passed is wrong. The message says what, and how to fix it."""

    exit_code = 2
