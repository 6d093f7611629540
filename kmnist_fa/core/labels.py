"""How a class is named for people: "お o" when its character is known, else its name.

The one place the format is decided; datasets, run records and plots all use it.
"""
from __future__ import annotations

from collections.abc import Sequence


def class_label(name: str, char: str | None) -> str:
    return f"{char} {name}" if char else name


def display_labels(classes: Sequence[str], chars: Sequence[str] | None) -> list[str]:
    return [class_label(n, chars[i] if chars else None) for i, n in enumerate(classes)]
