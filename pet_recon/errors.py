"""User-facing errors and warnings.

Every problem with a user's input or output location is raised as :class:`PetReconError`
with a one-line message that names the file and the problem. The CLI prints the message
and exits with status 2, without a traceback. A problem that does not stop the run is a
warning (:func:`warn`): logged, so the CLI prints it on stderr, and kept for the report.
"""

from __future__ import annotations

import logging


class PetReconError(Exception):
    """A problem with the user's input, output or options, explained in one line."""


def warn(warnings: list[str], message: str, logger: logging.Logger) -> None:
    """Log ``message`` as a warning on ``logger`` (stderr in the CLI) and append it to
    ``warnings`` (the run's report)."""
    logger.warning(message)
    warnings.append(message)
