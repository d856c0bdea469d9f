"""Skip configurations (docs/method.md section 2): which stages run only their mandatory sub-path."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence, Union


@dataclass(frozen=True)
class SkipConfig:
    """One flag per stage, first stage first; ``True`` skips that stage's skippable sub-path.

    The canonical name is the skip string: ``FFFF`` is the super-net, ``TTTT`` the base-net.
    """

    flags: tuple[bool, ...]

    def __str__(self) -> str:
        return "".join("T" if f else "F" for f in self.flags)

    def __len__(self) -> int:
        return len(self.flags)

    def __iter__(self):
        return iter(self.flags)

    @property
    def num_skipped(self) -> int:
        return sum(self.flags)

    @classmethod
    def super_net(cls, num_stages: int) -> "SkipConfig":
        return cls((False,) * num_stages)

    @classmethod
    def base_net(cls, num_stages: int) -> "SkipConfig":
        return cls((True,) * num_stages)

    @classmethod
    def all(cls, num_stages: int) -> list["SkipConfig"]:
        """All 2^S configurations in canonical (binary counting) order, ``FF..F`` first, ``TT..T`` last."""
        return [cls(flags) for flags in itertools.product((False, True), repeat=num_stages)]

    @classmethod
    def parse(cls, value: "SkipLike", num_stages: int) -> "SkipConfig":
        """Build from a skip string (``"TTFF"``), a sequence of bools or a SkipConfig; ``None`` is the super-net."""
        if value is None:
            return cls.super_net(num_stages)
        if isinstance(value, SkipConfig):
            flags = value.flags
        elif isinstance(value, str):
            bad = sorted(set(value.upper()) - {"T", "F"})
            if bad:
                raise ValueError(
                    f"skip string {value!r} has invalid character(s) {bad}: use one 'T' (skip) or 'F' (keep) per stage"
                )
            flags = tuple(c == "T" for c in value.upper())
        elif isinstance(value, Iterable):
            flags = tuple(value)
            if not all(isinstance(f, bool) for f in flags):
                raise ValueError(f"skip flags {value!r} must all be bools (True = skip)")
        else:
            raise ValueError(f"skip must be a string like 'TTFF', a sequence of bools or a SkipConfig, not {value!r}")
        if len(flags) != num_stages:
            raise ValueError(
                f"skip {value!r} has {len(flags)} flag(s) but the model has {num_stages} stages "
                f"(e.g. {str(cls.base_net(num_stages))!r})"
            )
        return cls(flags)


SkipLike = Union[str, Sequence[bool], SkipConfig, None]
