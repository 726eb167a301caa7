"""Clipboard: OSC 52 reaches the terminal (even over ssh); a system tool covers the rest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

TOOLS: list[tuple[str, list[str]]] = [
    ("wl-copy", ["wl-copy"]),
    ("xclip", ["xclip", "-selection", "clipboard"]),
    ("xsel", ["xsel", "--clipboard", "--input"]),
    ("pbcopy", ["pbcopy"]),
]


def system_tool() -> list[str] | None:
    """The first clipboard tool that exists and can work in this session."""
    for name, argv in TOOLS:
        if name == "wl-copy" and not os.environ.get("WAYLAND_DISPLAY"):
            continue
        if name in {"xclip", "xsel"} and not os.environ.get("DISPLAY"):
            continue
        if name == "pbcopy" and sys.platform != "darwin":
            continue
        if shutil.which(name):
            return argv
    return None


def copy_system(text: str) -> str | None:
    """Copy with a system tool; returns the tool's name, or None when there is none or it fails."""
    argv = system_tool()
    if argv is None:
        return None
    try:
        subprocess.run(argv, input=text.encode(), check=True, timeout=5, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return argv[0]
