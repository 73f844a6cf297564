"""The one exception type that reaches the user as a clean, one-line message."""


class TIError(Exception):
    """A problem the user can fix: the message names the problem and the fix, on one line."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; fix: {fix}" if fix else problem)
