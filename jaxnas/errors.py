"""Errors that reach a user as one line.

Every bad-input check in jaxnas raises :class:`JaxnasError` (a ``ValueError``) whose message is a
single sentence saying what was received and what to change. The command line prints
``jaxnas: error: <message>`` on stderr and exits with status 2; library users get the exception.
"""

from __future__ import annotations

__all__ = ["JaxnasError", "unknown_name"]


class JaxnasError(ValueError):
  """Bad input to jaxnas: the message is one line that says what to change."""


def unknown_name(kind: str, name: str, known) -> JaxnasError:
  """The error for a name that is not in a registry, listing the names that are."""
  choices = ", ".join(sorted(known))
  return JaxnasError(f"unknown {kind} {name!r}; choose one of: {choices}")
