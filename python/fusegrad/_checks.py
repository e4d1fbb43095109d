"""Small argument checks shared by the Python layer."""
from __future__ import annotations

import numpy as np


def is_int(v) -> bool:
    """True for Python and NumPy integers; False for bools (True is not a count, a size or a dim)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
