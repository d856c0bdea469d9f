"""DVC stage `prepare`: check the dataset can be read and write its manifest."""

from dataclasses import dataclass
from typing import Any

from adaskip.stage import StageResult, main, remove_outputs

OUT = "data/prepared"


@dataclass(frozen=True)
class Prepared(StageResult):
    manifest: dict[str, Any]  # data/prepared/manifest.json

    def summary(self) -> str:
        m = self.manifest
        return f"{m['name']}: {m['sizes']} images, {m['num_classes']} classes -> {OUT}/manifest.json"


def run(params, args) -> Prepared:
    from adaskip.data import prepare  # imports torch: after params are validated

    remove_outputs(OUT)
    return Prepared(prepare(params.data, OUT))


if __name__ == "__main__":
    main(__doc__, run)
