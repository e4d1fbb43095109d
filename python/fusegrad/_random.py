"""Random sources: one default generator, seeded by ``fusegrad.manual_seed``, that every draw
without an explicit generator uses (initializers, ``randn``/``rand``/``randint``, dropout,
``DataLoader`` shuffling, ``random_split``, ``GPT.generate`` without a seed), so one call makes
a script reproducible, as ``torch.manual_seed`` does.

>>> import fusegrad as fg
>>> _ = fg.manual_seed(0); a = fg.randn(3)
>>> _ = fg.manual_seed(0); bool((fg.randn(3) == a).all())
True
"""
from __future__ import annotations

import numpy as np

from ._checks import is_int


class Generator:
    """A seedable random source (like ``torch.Generator``) over NumPy's PCG64. Pass it as
    ``generator=`` to ``randn``/``rand``/``randint``/``dropout``/``random_split``."""

    def __init__(self, device="cpu"):
        if device != "cpu":
            raise ValueError(f"Generator: only device 'cpu' exists, got {device!r}")
        self.seed()

    def manual_seed(self, seed):
        if not is_int(seed):
            raise TypeError(f"manual_seed: seed must be an integer, got {type(seed).__name__} {seed!r}")
        self._seed = int(seed) % 2 ** 64          # negative seeds wrap, as in torch
        self.np = np.random.default_rng(self._seed)
        return self

    def seed(self) -> int:
        """Reseed from fresh OS entropy and return the new seed."""
        self.manual_seed(int(np.random.SeedSequence().entropy) % 2 ** 63)
        return self._seed

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> dict:
        return self.np.bit_generator.state

    def set_state(self, state: dict):
        self.np.bit_generator.state = state
        return self


default_generator = Generator()


def manual_seed(seed) -> Generator:
    """Seed every random source fusegrad draws from without an explicit generator."""
    return default_generator.manual_seed(seed)


def initial_seed() -> int:
    return default_generator.initial_seed()


def rng(generator=None) -> np.random.Generator:
    """The NumPy generator to draw from: ``generator`` (a fusegrad or NumPy generator) or the
    default one."""
    if generator is None:
        return default_generator.np
    if isinstance(generator, Generator):
        return generator.np
    if isinstance(generator, np.random.Generator):
        return generator
    raise TypeError(f"generator must be a fusegrad.Generator or numpy.random.Generator, "
                    f"got {type(generator).__name__}")


def rng_for_seed(seed=None) -> np.random.Generator:
    """A generator from an explicit ``seed``, or the default one when ``seed`` is None."""
    return default_generator.np if seed is None else np.random.default_rng(seed)
