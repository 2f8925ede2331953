"""The one exception type that means "the user gave bad input"."""


class HpoError(Exception):
    """Bad input a user can mend; the CLI prints it as one line and exits with status 2."""


def first_line(exc: BaseException | None) -> str:
    """An exception's message cut to its first line, for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
