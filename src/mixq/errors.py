"""The one exception type that mixq raises for bad user input.

The CLI turns a :class:`MixqError` into a single ``mixq: error: ...`` line and exit code 2, so every
message must name the input at fault and say what was expected.
"""


class MixqError(Exception):
    """Bad input (file, name, shape, budget) reported to the user as one clear message."""
