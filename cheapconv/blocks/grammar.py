"""Parser for the block notation: ``S``, ``S-2x2``, ``G(4)``, ``G(N/4)``, ``G(N)``, ``DW``, ``B(2)``,
``BG(2,4)``, ``BG(2,M/4)``, ``BG(2,M)`` and ``keep``.

Errors are :class:`~cheapconv.errors.PolicySyntaxError` with the text, a caret under the offending column
and the list of valid block names, so a typo in a long policy is found at a glance.
"""

from __future__ import annotations

import re

from ..errors import PolicySyntaxError
from .base import BLOCK_ALIASES, BLOCK_REGISTRY, BlockSpec, GroupCount

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:-[0-9]+x[0-9]+)?")
# ASCII only: str.isdigit() and float() also take fullwidth (４), superscript (²) and other Unicode digits, and
# float() takes '1_0', 'inf' and 'nan', none of which a spec means.
_INTEGER = re.compile(r"[0-9]{1,9}")   # more digits than any channel count: refused before int()
_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def valid_block_names() -> str:
    """The block families and aliases, as a human-readable list for error messages."""
    names = [cls.signature or cls.family for cls in BLOCK_REGISTRY.values()]
    names += [f"{alias} (= {canonical})" for alias, canonical in BLOCK_ALIASES.items()]
    return ", ".join(names)


class Parser:
    """Reports errors against the whole policy text (``source``) with ``offset`` = where the spec starts."""

    def __init__(self, text: str, source: str | None = None, offset: int = 0):
        self.text = text
        self.source = source if source is not None else text
        self.offset = offset

    def fail(self, message: str, col: int) -> PolicySyntaxError:
        col = self.offset + col
        line_start = self.source.rfind("\n", 0, col) + 1
        line_end = self.source.find("\n", col)
        line = self.source[line_start: line_end if line_end >= 0 else len(self.source)]
        caret = " " * (col - line_start) + "^"
        return PolicySyntaxError(
            f"{message} (column {col - line_start + 1}):\n    {line}\n    {caret}\n"
            f"Valid blocks: {valid_block_names()}."
        )

    def parse(self) -> BlockSpec:
        """The spec, with its ``@m`` rounding suffix where it has one (``B(2)@8``)."""
        body, at, suffix = self.text.partition("@")
        if not at:
            return self._parse_body(self.text)
        col = len(body) + 1 + (len(suffix) - len(suffix.lstrip()))
        multiple = self.positive_int((suffix.strip(), col), "the rounding multiple after '@'")
        if multiple < 2:
            raise self.fail(f"rounding to multiples of {multiple} changes nothing; write @8 or @16, or leave it out",
                            col)
        spec = self._parse_body(body)
        if not type(spec).rounds_widths:
            raise self.fail(f"{spec} has no inner width (rank, bottleneck width or channels per group) to round",
                            len(body))
        return spec.replace(multiple=multiple)

    def _parse_body(self, text: str) -> BlockSpec:
        start = len(text) - len(text.lstrip())
        stripped = text.strip()
        if not stripped:
            raise self.fail("empty block spec", start)
        m = _NAME.match(text, start)
        if not m:
            raise self.fail(f"a block spec starts with a block name, not {text[start]!r}", start)
        name = m.group(0)
        pos = m.end()
        if name in BLOCK_ALIASES:
            if text[pos:].strip():
                raise self.fail(f"{name} takes no arguments", pos)
            return parse_block(BLOCK_ALIASES[name])
        family = BLOCK_REGISTRY.get(name)
        if family is None:
            lower = {k.lower(): k for k in BLOCK_REGISTRY}
            hint = f"; did you mean {lower[name.lower()]!r}?" if name.lower() in lower else ""
            raise self.fail(f"unknown block {name!r}{hint}", start)
        args: list[tuple[str, int]] = []
        rest = text[pos:]
        if rest.strip():
            lead = len(rest) - len(rest.lstrip())
            pos += lead
            if text[pos] != "(":
                raise self.fail(f"expected '(' or the end of the spec after {name!r}", pos)
            close = text.find(")", pos)
            if close < 0:
                raise self.fail(f"missing ')' to close {name}(", len(text.rstrip()))
            if text[close + 1:].strip():
                raise self.fail("unexpected text after ')'", close + 1 + (len(text[close + 1:]) -
                                                                          len(text[close + 1:].lstrip())))
            inner_start = pos + 1
            col = inner_start
            for piece in text[inner_start:close].split(","):
                lead = len(piece) - len(piece.lstrip())
                args.append((piece.strip(), col + lead))
                col += len(piece) + 1
            if any(not a for a, _ in args):
                bad = next(c for a, c in args if not a)
                raise self.fail(f"empty argument in {name}(...)", bad)
        return family.from_args(args, self)

    # helpers for from_args -------------------------------------------------------------------------------
    def positive_int(self, arg: tuple[str, int], what: str) -> int:
        text, col = arg
        if not _INTEGER.fullmatch(text):
            raise self.fail(f"{what} must be a positive integer in ASCII digits (at most 9), got {text!r}", col)
        value = int(text)
        if value < 1:
            raise self.fail(f"{what} must be at least 1, got {value}", col)
        return value

    def fraction(self, arg: tuple[str, int], what: str) -> float:
        text, col = arg
        if not _NUMBER.fullmatch(text):
            raise self.fail(f"{what} must be a number in (0, 1] in ASCII digits, got {text!r}", col)
        value = float(text)
        if not 0 < value <= 1:
            raise self.fail(f"{what} must be in (0, 1], got {text}", col)
        return value

    def group_count(self, arg: tuple[str, int], symbol: str) -> GroupCount:
        text, col = arg
        compact = text.replace(" ", "")
        if compact == symbol:
            return GroupCount(divisor=1, symbol=symbol)
        if compact.startswith(symbol + "/"):
            d = self.positive_int((compact[len(symbol) + 1:], col + len(symbol) + 1), f"the divisor in {symbol}/d")
            return GroupCount(divisor=d, symbol=symbol)
        if _INTEGER.fullmatch(compact):
            return GroupCount(value=self.positive_int((compact, col), "the group count"), symbol=symbol)
        raise self.fail(f"a group count is an integer, {symbol} or {symbol}/d; got {text!r}", col)

    def arity(self, name: str, args: list[tuple[str, int]], expected: int, usage: str) -> None:
        if len(args) != expected:
            col = args[-1][1] + len(args[-1][0]) if args else len(self.text.rstrip())
            raise self.fail(f"{name} takes {expected} argument{'s' if expected != 1 else ''}: {usage}", col)


def split_top_level(text: str, separators: str = ",") -> list[str]:
    """``"G(2), BG(2,M)"`` -> ``["G(2)", "BG(2,M)"]``: split at ``separators`` outside parentheses (a spec's
    own arguments are comma-separated too); items stripped, empty ones dropped."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch in separators and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_block(text: str, *, source: str | None = None, offset: int = 0) -> BlockSpec:
    """Parse one block spec, e.g. ``parse_block("BG(2,M/4)")``. ``str()`` of the result parses back to it."""
    return Parser(text, source, offset).parse()
