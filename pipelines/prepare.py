"""DVC stage `prepare`: check the dataset can be read and write its manifest."""

from adaskip.stage import main, remove_outputs

OUT = "data/prepared"


def run(params, args) -> str:
    from adaskip.data import prepare  # imports torch: after params are validated

    remove_outputs(OUT)
    manifest = prepare(params.data, OUT)
    return f"{manifest['name']}: {manifest['sizes']} images, {manifest['num_classes']} classes -> {OUT}/manifest.json"


if __name__ == "__main__":
    main(__doc__, run)
