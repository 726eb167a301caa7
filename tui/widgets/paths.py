"""Folder-path completion for an Input: suggests the next existing sub-folder as you type."""

from __future__ import annotations

import os
from pathlib import Path

from textual.suggester import Suggester


class FolderSuggester(Suggester):
    """Completes the last path component against real folders (case-sensitive, like a shell)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        head, _, stem = value.rpartition(os.sep)
        parent = Path(head or ("/" if value.startswith(os.sep) else ".")).expanduser()
        try:
            names = sorted(
                e.name
                for e in os.scandir(parent)
                if e.is_dir() and e.name.startswith(stem) and not e.name.startswith(".")
            )
        except OSError:
            return None
        if not names:
            return None
        prefix = f"{head}{os.sep}" if head or value.startswith(os.sep) else ""
        return f"{prefix}{names[0]}{os.sep}"
