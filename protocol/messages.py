"""Error messages as both command lines print them: one line, whatever the text it quotes."""

from __future__ import annotations


def one_line(message: str) -> str:
    """`message` on one line: line breaks inside it (a path holding one, a native library's
    multi-line text) become " | ", so a refusal is always exactly one line on stderr."""
    parts = [part.strip() for part in message.splitlines()]
    return " | ".join(part for part in parts if part) or message.strip()
