"""Pieces shared by the tests/deploy check scripts.

SKIP is the exit status ctest reads as "skipped" (SKIP_RETURN_CODE 77): a
required tool is missing. Failures collects failed checks, printing each as
it is found, so a script reports every problem of a run, not only the first.
"""

SKIP = 77


class Failures:
    """Collects failed checks; each is printed as it is found."""

    def __init__(self):
        self.items = []

    def add(self, message):
        self.items.append(message)
        print("FAIL: " + message, flush=True)
