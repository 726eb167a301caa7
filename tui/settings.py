"""App-only settings (theme, keymap) in their own YAML file, so the engine config stays untouched.

The file is `app.yaml` in the platform config dir. A bad file never stops the app: it is reported
once and the defaults are used, because a typo in a colour scheme must not lock a user out.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from platformdirs import user_config_dir

DEFAULT_THEME = "embedscope-dusk"


class SettingsError(ValueError):
    """app.yaml is unreadable or has a key of the wrong shape."""


def settings_path() -> Path:
    return Path(user_config_dir("embedscope")) / "app.yaml"


@dataclass
class AppSettings:
    theme: str = DEFAULT_THEME
    keymap: dict[str, str] = field(default_factory=dict)
    path: Path = field(default_factory=settings_path)

    @classmethod
    def load(cls, path: Path | None = None) -> AppSettings:
        """Read the file; a missing file means defaults, a malformed one raises SettingsError."""
        path = path or settings_path()
        if not path.is_file():
            return cls(path=path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"{path}: cannot read app settings: {exc}") from exc
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: must be a mapping with 'theme' and 'keymap' keys")
        unknown = sorted(set(data) - {"theme", "keymap"})
        if unknown:
            raise SettingsError(
                f"{path}: unknown key(s) {', '.join(unknown)} (known keys: keymap, theme)"
            )
        theme = data.get("theme", DEFAULT_THEME)
        if not isinstance(theme, str):
            raise SettingsError(f"{path}: 'theme' must be a theme name, got {theme!r}")
        keymap = data.get("keymap") or {}
        if not isinstance(keymap, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in keymap.items()
        ):
            raise SettingsError(
                f"{path}: 'keymap' must map binding ids to keys, e.g. 'search.mode: ctrl+t'"
            )
        return cls(theme=theme, keymap=dict(keymap), path=path)

    def save(self) -> None:
        """Atomic write (temp file, fsync, replace): a crash never leaves half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, object] = {"theme": self.theme}
        if self.keymap:
            data["keymap"] = self.keymap
        fd, tmp = tempfile.mkstemp(prefix=".app-", suffix=".yaml", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                yaml.safe_dump(data, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
