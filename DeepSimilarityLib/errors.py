"""Errors raised on bad user input.

Every error that a user can cause (a missing file, an image of the wrong
dimensionality, NaN values, a mismatched size) is an :class:`InputError`, a
``ValueError`` whose message names the offending file, node or parameter. The
command line prints it as one line and exits with code 2; the Slicer module
shows it in one message box. Anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input, with a message that names the input (file, node, parameter)."""

    def __init__(self, name, problem):
        self.name = str(name)
        self.problem = str(problem)
        super().__init__(f"{self.name}: {self.problem}")


def first_line(exc: BaseException, limit: int = 120) -> str:
    """The first line of an underlying error's message (torch's load errors span dozens of lines)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class TrainingCancelled(Exception):
    """Raised inside long work (training, filling a case database) when ``should_stop()`` returned true.

    Defined here, free of torch, so that modules without torch (the case
    database) raise the same exception; ``ctmr.sdae`` re-exports it.
    """
