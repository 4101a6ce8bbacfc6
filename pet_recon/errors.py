"""User-facing errors.

Every problem with a user's input or output location is raised as :class:`PetReconError`
with a one-line message that names the file and the problem. The CLI prints the message
and exits with status 2, without a traceback.
"""


class PetReconError(Exception):
    """A problem with the user's input, output or options, explained in one line."""
