"""Find the files to index under the folders and files a user names.

Patterns use gitignore syntax throughout (include, exclude and ignore files), matched against the
path relative to the folder being walked, so one mental model covers all three.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pathspec import GitIgnoreSpec

from engine.documents.loaders import SUPPORTED_SUFFIXES, DocumentError


@dataclass(frozen=True, slots=True)
class _IgnoreFile:
    """Patterns from one ignore file; `base` is its folder relative to the walk root ("" = root)."""

    base: str
    spec: GitIgnoreSpec

    def verdict(self, rel: str) -> bool | None:
        """Last matching pattern wins (git semantics): True = ignored, False = re-included."""
        if self.base:
            if not rel.startswith(self.base + "/"):
                return None
            rel = rel[len(self.base) + 1 :]
        for pattern in reversed(self.spec.patterns):
            if pattern.include is not None and pattern.match_file(rel) is not None:
                return bool(pattern.include)
        return None


def _ignored(rel: str, ignore_files: Sequence[_IgnoreFile]) -> bool:
    """Deeper ignore files override shallower ones, as in git."""
    result = False
    for ignore in ignore_files:
        verdict = ignore.verdict(rel)
        if verdict is not None:
            result = verdict
    return result


def _spec(patterns: Sequence[str]) -> GitIgnoreSpec | None:
    return GitIgnoreSpec.from_lines(patterns) if patterns else None


def discover(
    paths: Sequence[Path],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    ignore_files: Sequence[str] = (".gitignore", ".embedscopeignore"),
) -> list[Path]:
    """Files to index, sorted and de-duplicated.

    Without `include`, only supported suffixes are picked up; with it, a file must match an
    include pattern and then any suffix is taken (it is loaded as plain text). Hidden files and
    folders are skipped while walking, and symlinked folders are not followed (no cycles). A file
    named explicitly skips ignore files and exclude patterns but must still be loadable.
    """
    include_spec = _spec(include)
    exclude_spec = _spec(exclude)
    found: dict[Path, Path] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            walked = _walk(path, include_spec, exclude_spec, tuple(ignore_files))
            for file in walked:
                found.setdefault(file.resolve(), file)
        elif path.is_file():
            wanted = path.suffix.lower() in SUPPORTED_SUFFIXES or (
                include_spec is not None and include_spec.match_file(path.name)
            )
            if not wanted:
                supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
                raise DocumentError(
                    path,
                    f"unsupported file type {path.suffix or '(no suffix)'!r} "
                    f"(supported: {supported}; or add an include glob to read it as text)",
                )
            found.setdefault(path.resolve(), path)
        elif path.exists():
            raise DocumentError(path, "not a regular file or folder")
        else:
            raise DocumentError(path, "no such file or folder")
    return sorted(found.values(), key=lambda p: p.as_posix())


def _walk(
    root: Path,
    include_spec: GitIgnoreSpec | None,
    exclude_spec: GitIgnoreSpec | None,
    ignore_names: tuple[str, ...],
) -> list[Path]:
    out: list[Path] = []
    stack: list[tuple[Path, str, tuple[_IgnoreFile, ...]]] = [(root, "", ())]
    while stack:
        folder, rel_folder, inherited = stack.pop()
        ignores = inherited + _read_ignore_files(folder, rel_folder, ignore_names)
        try:
            with os.scandir(folder) as entries:
                listing = sorted(entries, key=lambda e: e.name)
        except PermissionError as exc:
            raise DocumentError(folder, "permission denied (cannot list folder)") from exc
        for entry in listing:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            if entry.is_dir(follow_symlinks=False):
                dir_rel = rel + "/"
                if _ignored(dir_rel, ignores) or (
                    exclude_spec is not None and exclude_spec.match_file(dir_rel)
                ):
                    continue
                stack.append((Path(entry.path), rel, ignores))
            elif entry.is_file():
                if _ignored(rel, ignores):
                    continue
                if exclude_spec is not None and exclude_spec.match_file(rel):
                    continue
                if include_spec is not None:
                    if not include_spec.match_file(rel):
                        continue
                elif Path(entry.name).suffix.lower() not in SUPPORTED_SUFFIXES:
                    continue
                out.append(Path(entry.path))
    return out


def _read_ignore_files(
    folder: Path, rel_folder: str, ignore_names: tuple[str, ...]
) -> tuple[_IgnoreFile, ...]:
    found: list[_IgnoreFile] = []
    for name in ignore_names:
        file = folder / name
        if not file.is_file():
            continue
        try:
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise DocumentError(file, f"cannot read ignore file: {exc.strerror or exc}") from exc
        try:
            spec = GitIgnoreSpec.from_lines(lines)
        except ValueError as exc:
            raise DocumentError(file, f"invalid ignore pattern: {exc}") from None
        found.append(_IgnoreFile(rel_folder, spec))
    return tuple(found)
