"""Textual themes from `themes/*.yaml`: a palette is data a user can copy and edit, not code."""

from __future__ import annotations

from pathlib import Path

import yaml
from textual.theme import Theme

THEMES_DIR = Path(__file__).resolve().parents[1] / "themes"
COLOR_KEYS = (
    "primary",
    "secondary",
    "warning",
    "error",
    "success",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)


class ThemeFileError(ValueError):
    """A theme YAML file is malformed; the message names the file and the key."""


def load_theme(path: Path) -> Theme:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ThemeFileError(f"{path}: cannot read theme: {exc}") from exc
    if not isinstance(data, dict):
        raise ThemeFileError(f"{path}: a theme must be a mapping (name, primary, dark, ...)")
    allowed = {"name", "dark", "variables", *COLOR_KEYS}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ThemeFileError(
            f"{path}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    for key in ("name", "primary"):
        if not isinstance(data.get(key), str):
            raise ThemeFileError(f"{path}: '{key}' is required and must be a string")
    if not isinstance(data.get("dark", True), bool):
        raise ThemeFileError(f"{path}: 'dark' must be true or false")
    variables = data.get("variables") or {}
    if not isinstance(variables, dict):
        raise ThemeFileError(f"{path}: 'variables' must map CSS variable names to values")
    colors = {k: str(data[k]) for k in COLOR_KEYS if k in data}
    try:
        return Theme(
            name=data["name"],
            dark=data.get("dark", True),
            variables={str(k): str(v) for k, v in variables.items()},
            **colors,
        )
    except Exception as exc:
        raise ThemeFileError(f"{path}: invalid colour: {exc}") from exc


def load_themes(folder: Path = THEMES_DIR) -> list[Theme]:
    """Every `*.yaml` theme in `folder`, sorted by file name; raises on the first bad file."""
    return [load_theme(p) for p in sorted(folder.glob("*.yaml"))]
