"""Types of flow parameters as users type them on the command line.

``prefect deployment run ... -p candidate=2`` sends the JSON number 2; a parameter typed
``str`` rejects it before the run starts. Version parameters accept a number or a string,
and the flows turn them into the registry's version strings.
"""

from __future__ import annotations

Version = str | int
"""A model version as typed: ``2`` or ``"2"``."""


def version_text(value: Version) -> str:
    """The registry's version string of ``value`` (``2`` -> ``"2"``)."""
    return str(value).strip()
