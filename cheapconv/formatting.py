"""Numbers and tables as text, for every report: ``human`` (1.23M), ``ratio`` (2.00×), ``render_plain``.

Ground floor: imports nothing else from cheapconv, so the plan, the profiles, the search and the sweep all
format numbers the same way without borrowing from one another.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["human", "ratio", "render_plain"]


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (k, M, G), for tables."""
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= threshold:
            return f"{n / threshold:.3g}{suffix}{unit}"
    return f"{n:g}{unit}"


def ratio(before: float, after: float) -> str:
    """``before`` ÷ ``after`` as ``'2.00×'``; ``'–'`` when ``after`` is 0."""
    return f"{before / after:.2f}×" if after else "–"


def render_plain(renderable, width: int = 160) -> str:
    """Render a rich renderable to plain text (no colour), e.g. for ``str(plan)`` and logs."""
    console = Console(width=width, record=True, file=_NullFile(), color_system=None)
    console.print(renderable)
    return console.export_text()


class _NullFile:
    def write(self, s):
        return len(s)

    def flush(self):
        pass
