"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input (config, data, checkpoint): the message names the culprit and what to do."""
