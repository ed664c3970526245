"""deploy/chronos.example.toml names every setting with its default and a comment, so they never drift."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec

from chronos.config import Settings, load_settings

EXAMPLE = Path(__file__).parents[2] / "deploy" / "chronos.example.toml"
_KEY = re.compile(r"^(#\s*)?([a-z_][a-z0-9_]*)\s*=")


def _defaults() -> dict[str, object]:
    return msgspec.to_builtins(Settings())


def _keys_by_section(text: str) -> dict[str, dict[str, tuple[bool, str]]]:
    """section -> key -> (commented out, the comment line above it)."""
    out: dict[str, dict[str, tuple[bool, str]]] = {"": {}}
    section, previous = "", ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            out.setdefault(section, {})
        elif m := _KEY.match(stripped):
            out[section][m.group(2)] = (bool(m.group(1)), previous)
        previous = stripped if stripped.startswith("#") and not _KEY.match(stripped) else previous
        if not stripped:
            previous = ""
    return out


def test_example_loads_to_the_defaults():
    assert load_settings(EXAMPLE, read_env=False) == Settings()


def test_every_setting_is_in_the_example_with_its_default():
    data = tomllib.loads(EXAMPLE.read_text())
    keys = _keys_by_section(EXAMPLE.read_text())
    missing, wrong = [], []
    for name, default in _defaults().items():
        if isinstance(default, dict):
            for key, value in default.items():
                where = f"{name}.{key}"
                if key not in keys.get(name, {}):
                    missing.append(where)
                elif value is None:
                    assert keys[name][key][0], f"{where} defaults to unset: show it commented out"
                elif data[name].get(key) != value:
                    wrong.append((where, data[name].get(key), value))
        elif name not in keys[""]:
            missing.append(name)
        elif data[name] != default:
            wrong.append((name, data[name], default))
    assert not missing, f"settings missing from the example: {missing}"
    assert not wrong, f"example values that are not the defaults: {wrong}"


def test_every_example_key_is_a_setting_and_has_a_comment():
    defaults = _defaults()
    for section, keys in _keys_by_section(EXAMPLE.read_text()).items():
        for key, (_, comment) in keys.items():
            known = defaults if section == "" else defaults.get(section, {})
            assert key in known, f"{section}.{key} is in the example but not in Settings"
            assert comment.startswith("#"), f"{section}.{key} needs a one-line comment above it"
