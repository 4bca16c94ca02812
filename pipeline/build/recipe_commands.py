"""`tokenmill recipe show|copy`: a recipe as a build reads it, `extends:` merged and every path resolved; `copy`
writes it as a self-contained file to edit (another mix, other roots), its paths relative to the new file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from pipeline.build.recipe import RecipeError, locate_recipe, packaged_recipes, read_recipe_yaml, recipe_from_dict


def resolved_recipe(name: str) -> dict:
    """The recipe `name` (a file or a packaged recipe's name) with its `extends:` chain merged and its local paths
    absolute, checked as a build checks it."""
    file, relative_to = locate_recipe(name)
    data = read_recipe_yaml(file, relative_to=relative_to)
    recipe_from_dict(data)  # refuse what a build would refuse
    return data


def _local_paths(data: dict):
    """(mapping, key) of every local path in the recipe: the sources' roots and the tokenizer model."""
    for source in data.get("sources") or []:
        if isinstance(source, dict) and isinstance(source.get("root"), str):
            yield source, "root"
    tokenizer = data.get("tokenizer")
    if isinstance(tokenizer, dict) and isinstance(tokenizer.get("model"), str):
        yield tokenizer, "model"


def relative_to(data: dict, folder: Path) -> dict:
    """The recipe with its absolute local paths made relative to `folder`, as read_recipe_yaml resolves them."""
    for mapping, key in _local_paths(data):
        if "://" not in mapping[key] and os.path.isabs(mapping[key]):
            mapping[key] = os.path.relpath(mapping[key], folder)
    return data


def _text(data: dict, header: str) -> str:
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tokenmill recipe",
        description="Show a recipe as a build reads it, or copy it into an "
        "editable, self-contained file (`extends:` merged, paths relative to the copy).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="show|copy")
    show = actions.add_parser(
        "show",
        help="print the recipe with `extends:` merged and every path absolute",
        description="Print the recipe with `extends:` merged and every path absolute.",
    )
    show.add_argument("recipe", help=f"a recipe file, or a packaged recipe's name ({', '.join(packaged_recipes())})")
    copy = actions.add_parser(
        "copy",
        help="write a self-contained copy to edit, its paths relative to the new file",
        description="Write a self-contained copy to edit (`extends:` merged, paths relative to the new file).",
    )
    copy.add_argument("recipe", help=f"a recipe file, or a packaged recipe's name ({', '.join(packaged_recipes())})")
    copy.add_argument("file", type=Path, help="the new recipe file, e.g. mix-6-4.yaml; refused if it exists")
    args = parser.parse_args(argv)
    try:
        data = resolved_recipe(args.recipe)
    except RecipeError as e:
        print(f"tokenmill recipe {args.action}: {e}", file=sys.stderr)
        return 2
    if args.action == "show":
        print(_text(data, f"# {args.recipe}, as a build reads it: `extends:` merged, paths absolute\n"), end="")
        return 0
    if args.file.exists():
        print(f"tokenmill recipe copy: {args.file} exists; give a new file name (or delete it first)", file=sys.stderr)
        return 2
    if not args.file.parent.is_dir():
        print(f"tokenmill recipe copy: {args.file.parent} is not a folder; create it first", file=sys.stderr)
        return 2
    folder = args.file.resolve().parent
    header = (
        f"# From `tokenmill recipe copy {args.recipe}`: self-contained (no `extends:`), paths relative to this file.\n"
        f"# Edit what you change (e.g. the sources' weights), then: tokenmill build {args.file} --out DIR\n"
    )
    args.file.write_text(_text(relative_to(data, folder), header))
    print(f"wrote {args.file}: edit it, then `tokenmill build {args.file} --out DIR`")
    return 0
