"""``adaskip recipe``: merge a training recipe (params overlay) into params.yaml, keeping its comments."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..recipes import RECIPES_DIR, shipped

    listing = "\n".join(f"  {name:<20} {title}" for name, title in shipped().items())
    r = sub.add_parser(
        "recipe",
        help="apply a training recipe (params overlay) to params.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Merge a recipe's keys into params.yaml, keeping its comments and key order; "
        "validate the result (keys, values, data.path, the model) and write it only then.\n"
        "An unknown recipe or a bad key: one-line error, exit 2, params.yaml untouched.",
        epilog=f"shipped recipes ({RECIPES_DIR}):\n{listing}\n\nexample:\n"
        "  adaskip recipe resnet50_imagenet --set data.path=/data/imagenet && dvc repro",
    )
    r.add_argument("recipe", metavar="NAME_OR_PATH", help="a shipped recipe's name, or the path of an overlay file")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.SUB=VALUE",
        help="override one key after the recipe, value as YAML (repeatable): --set data.path=/data/cifar",
    )
    r.add_argument("--params", default="params.yaml", help="parameters file to update (default: %(default)s)")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Merge a recipe (and ``--set`` items) into params.yaml, keeping its comments; print what changed."""
    from ..recipes import apply_recipe, recipe_overlay

    path, overlay = recipe_overlay(args.recipe, args.set)
    changes = apply_recipe(overlay, args.params, source=f"recipe {path.stem}")
    for c in changes:
        print("  " + c.line())
    print(
        f"{args.params}: {len(changes)} key(s) changed by recipe {path.stem}"
        + ("; now run `dvc repro` (or `make repro`)" if changes else " (already applied)")
    )
    return 0
