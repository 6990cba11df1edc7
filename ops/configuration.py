"""The one exception for configuration that is missing or malformed.

It lives at the bottom of the layer map so settings (controlplane.env), logging (ops.logs) and
the program registry (runs.programs) raise the same thing, and the process stops with one clear line.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""
