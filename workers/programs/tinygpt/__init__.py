"""tinygpt: a small byte-level GPT trained on a built-in corpus.

Run with ``python -m workers.programs.tinygpt``.  Importing this package is
cheap (no torch); :mod:`.schema` describes the parameters.
"""

from .schema import DESCRIPTION, PARAMS

__all__ = ["DESCRIPTION", "PARAMS"]
