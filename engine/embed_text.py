"""The one text the model embeds for a piece of a document: its title, a space, its text.

Shared by the corpus index (every chunk of a titled document carries the title) and by
`embedscope eval` (BEIR builds documents as `title + " " + text`), so a document short enough
to be one chunk gets exactly the vector the evaluation measured.
"""

from __future__ import annotations


def embedded_text(title: str, text: str) -> str:
    """`(title + " " + text).strip()`: BEIR's and MTEB's document text, and ours."""
    return f"{title} {text}".strip()
