"""Find the files to index under the folders and files a user names.

Patterns use gitignore syntax throughout (include, exclude and ignore files), matched against the
path relative to the folder being walked, so one mental model covers all three.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.documents.loaders import (
    NOT_UTF8_NAME,
    SUPPORTED_SUFFIXES,
    DocumentError,
    describe_mode,
    display_path,
    is_utf8,
)

if TYPE_CHECKING:
    # pathspec (~50 ms to import) is loaded by the functions that walk folders, so a command
    # that only searches never pays for it.
    from pathspec import GitIgnoreSpec


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
    from pathspec import GitIgnoreSpec

    return GitIgnoreSpec.from_lines(patterns) if patterns else None


def discover(
    paths: Sequence[Path],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    ignore_files: Sequence[str] = (".gitignore", ".embedscopeignore"),
    skipped: list[DocumentError] | None = None,
) -> list[Path]:
    """Files to index, sorted and de-duplicated.

    Without `include`, only supported suffixes are picked up; with it, a file must match an
    include pattern and then any suffix is taken (it is loaded as plain text). Hidden files and
    folders are skipped while walking, and symlinked folders are not followed (no cycles). A file
    named explicitly skips ignore files and exclude patterns but must still be loadable.

    What would be indexed but cannot be (a dangling or looping symlink, one pointing outside the
    folder, a FIFO, socket or device, a file or folder name that is not UTF-8, a subfolder that
    cannot be listed) is left out and, when `skipped` is given, reported there with its path
    relative to the folder walked, so one odd entry never stops the run.
    """
    filters = _Filters(_spec(include), _spec(exclude))
    report = skipped if skipped is not None else []
    found: dict[Path, Path] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            walked = _walk(path, filters, tuple(ignore_files), report)
            for file in walked:
                found.setdefault(file.resolve(), file)
        elif path.is_file():
            wanted = path.suffix.lower() in SUPPORTED_SUFFIXES or (
                filters.include is not None and filters.include.match_file(path.name)
            )
            if not wanted:
                supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
                raise DocumentError(
                    path,
                    f"unsupported file type {path.suffix or '(no suffix)'!r} "
                    f"(supported: {supported}; or add an include glob to read it as text)",
                )
            if is_utf8(path.name):
                found.setdefault(path.resolve(), path)
            else:
                report.append(DocumentError(path.name, NOT_UTF8_NAME))
        elif path.exists():
            raise DocumentError(path, "not a regular file or folder")
        else:
            raise DocumentError(path, "no such file or folder")
    return sorted(found.values(), key=lambda p: p.as_posix())


@dataclass(frozen=True, slots=True)
class _Filters:
    include: GitIgnoreSpec | None
    exclude: GitIgnoreSpec | None

    def wants_folder(self, rel: str, ignores: Sequence[_IgnoreFile]) -> bool:
        dir_rel = rel + "/"
        return not _ignored(dir_rel, ignores) and not (
            self.exclude is not None and self.exclude.match_file(dir_rel)
        )

    def wants_file(self, rel: str, name: str, ignores: Sequence[_IgnoreFile]) -> bool:
        if _ignored(rel, ignores):
            return False
        if self.exclude is not None and self.exclude.match_file(rel):
            return False
        if self.include is not None:
            return self.include.match_file(rel)
        return Path(name).suffix.lower() in SUPPORTED_SUFFIXES


def _walk(
    root: Path, filters: _Filters, ignore_names: tuple[str, ...], skipped: list[DocumentError]
) -> list[Path]:
    """Only the root folder's own failures (cannot list it, a broken ignore file) raise."""
    real_root = os.path.realpath(root)
    out: list[Path] = []
    stack: list[tuple[Path, str, tuple[_IgnoreFile, ...]]] = [(root, "", ())]
    while stack:
        folder, rel_folder, inherited = stack.pop()
        try:
            ignores = inherited + _read_ignore_files(folder, rel_folder, ignore_names)
            with os.scandir(folder) as entries:
                listing = sorted(entries, key=lambda e: e.name)
        except (OSError, DocumentError) as exc:
            if isinstance(exc, DocumentError):
                reason = exc.reason
            else:
                reason = f"cannot list folder ({_error_text(exc)})"
            if not rel_folder:
                raise DocumentError(folder, reason) from exc
            skipped.append(DocumentError(rel_folder + "/", f"folder left out: {reason}"))
            continue
        for entry in listing:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            if entry.is_dir(follow_symlinks=False):
                if not filters.wants_folder(rel, ignores):
                    continue
                if is_utf8(entry.name):
                    stack.append((Path(entry.path), rel, ignores))
                else:
                    skipped.append(
                        DocumentError(rel + "/", "folder name is not valid UTF-8 (rename it)")
                    )
            elif _links_to_folder(entry) and filters.wants_folder(rel, ignores):
                skipped.append(
                    DocumentError(
                        rel, "symlink to a folder, not followed (index the folder it points at)"
                    )
                )
            elif filters.wants_file(rel, entry.name, ignores):
                reason = _unindexable(entry, real_root)
                if reason is None:
                    out.append(Path(entry.path))
                else:
                    skipped.append(DocumentError(rel, reason))
    return out


def _links_to_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink() and entry.is_dir()
    except OSError:  # a symlink loop; reported as such by `_unindexable`
        return False


def _unindexable(entry: os.DirEntry[str], real_root: str) -> str | None:
    """Why a wanted entry cannot be read as a file of this folder, or None when it can."""
    try:
        mode = os.stat(entry.path).st_mode
    except FileNotFoundError:
        return "broken symlink (what it points at does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (it points back at itself)"
        return _error_text(exc)
    if not stat.S_ISREG(mode):
        return f"not a regular file: {describe_mode(mode)}"
    if entry.is_symlink():
        target = os.path.realpath(entry.path)
        if os.path.commonpath([real_root, target]) != real_root:
            return f"symlink points outside the folder (to {display_path(target)})"
    if not is_utf8(entry.name):
        return NOT_UTF8_NAME
    return None


def _error_text(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


def _read_ignore_files(
    folder: Path, rel_folder: str, ignore_names: tuple[str, ...]
) -> tuple[_IgnoreFile, ...]:
    from pathspec import GitIgnoreSpec

    found: list[_IgnoreFile] = []
    for name in ignore_names:
        file = folder / name
        if not file.is_file():
            continue
        try:
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise DocumentError(file, f"cannot read {name} ({_error_text(exc)})") from exc
        try:
            spec = GitIgnoreSpec.from_lines(lines)
        except ValueError as exc:
            raise DocumentError(file, f"invalid pattern in {name}: {exc}") from None
        found.append(_IgnoreFile(rel_folder, spec))
    return tuple(found)
