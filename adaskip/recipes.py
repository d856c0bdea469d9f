"""Recipes: params overlays (``recipes/*.yaml``) merged into params.yaml with its comments and key order kept.

An overlay holds only the keys a recipe sets; ``model.kwargs`` replaces the whole dict (as in
:func:`adaskip.config.merge_params`). :func:`apply_recipe` validates the merged parameters before writing.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from .config import ConfigError, merges, parse_params
from .errors import AdaskipError
from .files import atomic_path

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


class RecipeError(AdaskipError, ValueError):
    """An unknown recipe, an unreadable overlay or a malformed ``--set``."""


@dataclass(frozen=True)
class Change:
    """One key the overlay changed: its dotted name and the old and new values (plain Python)."""

    key: str
    old: Any
    new: Any

    def line(self) -> str:
        return f"{self.key}: {_flat(self.old)} -> {_flat(self.new)}"


def shipped(folder: Path = RECIPES_DIR) -> dict[str, str]:
    """The recipes in ``folder``: name -> its title (its header comment's first line, up to a colon)."""
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        first = next((ln for ln in path.read_text().splitlines() if ln.startswith("#")), "#")
        out[path.stem] = first.lstrip("# ").split(":")[0].strip()
    return out


def find_recipe(name_or_path: str, folder: Path = RECIPES_DIR) -> Path:
    """A shipped recipe's file by name (``cifar100``), or any overlay file by path."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    candidate = folder / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if "/" not in name_or_path and candidate.is_file():
        return candidate
    raise RecipeError(
        f"unknown recipe {name_or_path!r}: shipped recipes are {', '.join(shipped(folder)) or 'none'} "
        f"(in {folder}), or give the path of an overlay file"
    )


def load_overlay(path: Path) -> dict[str, Any]:
    """An overlay file as a dict (read as params.yaml is read, with PyYAML)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: an overlay is a mapping of params.yaml sections (data, model, train, ...)")
    return raw


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "data.path=/data"]`` as a nested overlay; values are YAML (``[1, 2]``, ``null``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise RecipeError(f"--set {item!r}: expected section.key=value, e.g. train.lr=0.1")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {p} is set to a value and used as a section")
        try:
            node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML") from None
    return out


def _yaml() -> YAML:
    """A round-trip YAML in params.yaml's style: 2-space indents, ``null`` written out, no re-wrapping."""
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def _plain(value: Any) -> Any:
    """A ruamel node as plain dicts, lists and scalars (for comparing and printing)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    for kind in (bool, int, float, str):  # ruamel's ScalarFloat, ScalarInt, ... as the builtin
        if isinstance(value, kind):
            return kind(value)
    return value


def _flat(value: Any) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True, width=4096).strip().removesuffix("\n...")


def _node(value: Any, nested: bool = False) -> Any:
    """A plain value as a ruamel node: flat lists and inner leaf mappings in flow style, as params.yaml writes them."""
    if isinstance(value, dict):
        m = CommentedMap((k, _node(v, True)) for k, v in value.items())
        if not value or (nested and all(not isinstance(v, dict) for v in value.values())):
            m.fa.set_flow_style()
        return m
    if isinstance(value, list):
        s = CommentedSeq(_node(v, True) for v in value)
        if all(not isinstance(v, (dict, list)) for v in value):
            s.fa.set_flow_style()
        return s
    return value


def merge_into(doc: CommentedMap, overlay: dict[str, Any], prefix: str = "") -> list[Change]:
    """Set ``overlay``'s keys in the round-trip document ``doc`` in place (sections merge, ``kwargs`` is replaced
    whole, new keys go last); an equal value is left untouched. Returns what changed."""
    changes = []
    for key, new in overlay.items():
        name = f"{prefix}{key}"
        old = doc.get(key)
        if merges(key, old, new):
            changes += merge_into(old, new, f"{name}.")
        elif key not in doc or _plain(old) != new:
            changes.append(Change(name, _plain(old), new))
            doc[key] = _node(new)
            _align_comment(doc, key)
    return changes


def _align_comment(doc: CommentedMap, key: str) -> None:
    """Put ``key``'s end-of-line comment back in its siblings' column (a long value written once, e.g. a data.path,
    pushes it right for good)."""
    tokens = {k: t[2] for k, t in doc.ca.items.items() if len(t) > 2 and t[2] is not None}
    cols = [t.column for k, t in tokens.items() if k != key]
    if key in tokens and cols:
        tokens[key].column = max(set(cols), key=cols.count)


def apply_recipe(
    overlay: dict[str, Any], params_path: str | os.PathLike = "params.yaml", source: str = "recipe", write: bool = True
) -> list[Change]:
    """Merge ``overlay`` into ``params_path`` keeping its comments and order, validate the result (every key and
    value, data.path, and the model built with random weights), then write it atomically; nothing is written when
    validation fails or nothing changed. Returns the changes."""
    path = Path(params_path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (run from the project root, or pass --params)")
    y = _yaml()
    doc = y.load(path.read_text())
    changes = merge_into(doc, overlay)
    buf = io.StringIO()
    y.dump(doc, buf)
    check(yaml.safe_load(buf.getvalue()), f"{path} + {source}")
    if write and changes:
        with atomic_path(path) as tmp:
            tmp.write_text(buf.getvalue())
    return changes


def check(raw: dict[str, Any], source: str) -> None:
    """Validate merged parameters as a stage would, and build the model (random weights: no download)."""
    try:
        params = parse_params(raw, source)
    except ConfigError as e:
        hint = " (add --set data.path=DIR)" if "data.path" in str(e) else ""
        raise ConfigError(f"{e}{hint}") from None
    from .build import build_model  # here: recipes are listed without importing timm

    try:
        build_model(params)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: model: {params.model.name} cannot be built: {e}") from None


def recipe_overlay(
    name_or_path: str, sets: Optional[Sequence[str]] = None, folder: Path = RECIPES_DIR
) -> tuple[Path, dict[str, Any]]:
    """The overlay of a recipe with the ``--set`` items on top: (recipe file, merged overlay)."""
    from .config import merge_params

    path = find_recipe(name_or_path, folder)
    return path, merge_params(load_overlay(path), parse_sets(sets or []))
