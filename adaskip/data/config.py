"""Dataset configuration (the ``data:`` block of params.yaml) and the error raised for unreadable data."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import AdaskipError

DatasetName = Literal["digits", "cifar10", "cifar100", "imagefolder"]

_PATH_HINT = {
    "cifar10": "a folder holding cifar-10-batches-py",
    "cifar100": "a folder holding cifar-100-python",
    "imagefolder": "a folder with train/<class>/*.png and val/<class>/*.png (or test/)",
}


class DataError(AdaskipError, ValueError):
    """The dataset cannot be found or read; the message says what is wrong and how to fix it."""


class DataConfig(BaseModel):
    """Which dataset to use and how to split and transform it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: DatasetName = "digits"
    path: Optional[str] = None
    image_size: int = Field(32, ge=8)
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    seed: int = 0
    augment: bool = True
    workers: Optional[int] = Field(
        None,
        ge=0,
        description="DataLoader worker processes per rank (decoding and "
        "augmentation); null = 0 for digits, else min(4, CPUs per rank - 1)",
    )

    @model_validator(mode="after")
    def _path_required(self) -> "DataConfig":
        if self.name != "digits" and not self.path:
            raise ValueError(
                f"data.path is required for dataset '{self.name}': set data.path in params.yaml "
                f"to {_PATH_HINT[self.name]}"
            )
        return self


def one_line(e: BaseException) -> str:
    """``"Type: message"`` of ``e`` on a single line, for embedding in a DataError."""
    return " ".join(f"{type(e).__name__}: {e}".split())
