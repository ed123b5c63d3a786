"""Policies: which layer gets which block.

A policy is either one block spec (``G(4)``: every eligible layer gets it) or ordered rules where the
first match wins::

    conv1=keep; layer4.*=BG(2,4); G(4)

* ``SELECTOR=SPEC`` applies SPEC to layers whose qualified module name matches SELECTOR. Selectors are
  shell globs (``layer4.*``, ``layer?.0.conv1``) or, prefixed with ``re:``, Python regular expressions that
  must match the whole name (``re:layer[34]\\..*``).
* A bare ``SPEC`` (no selector) is a default rule. Default rules skip the stem conv (the one that reads the
  image), as the paper does; a rule with a selector applies to whatever it names, the stem included.
* ``keep`` (or ``S``) keeps what it matches.
* Rules are separated by ``;`` or new lines; ``#`` starts a comment (policy files: one rule per line).

For block-level specs (``B``, ``BG``) a rule matches a residual-branch pair through its first conv's name
(``layer1.0.conv1``) or the name of the block that holds the pair (``layer1.0``).

``str(parse_policy(s))`` is the canonical text and parses back to an equal policy.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..blocks import BlockSpec, parse_block, rounded
from ..blocks.grammar import Parser, split_top_level
from ..bounded import MiB, read_text
from ..errors import PolicySyntaxError, UsageError

#: the largest policy file read (a model's one-rule-per-layer policy is a few KiB; even a 1,000-layer one, 60 KiB)
POLICY_FILE_MAX_BYTES = 1 * MiB
#: the most rules a policy may hold (a model with more replaceable layers than this does not exist)
POLICY_MAX_RULES = 10_000


@dataclass(frozen=True)
class Selector:
    """A layer-name pattern: a glob, or a full-match regular expression when written ``re:...``."""

    pattern: str

    @property
    def is_regex(self) -> bool:
        return self.pattern.startswith("re:")

    @property
    def is_literal(self) -> bool:
        """True for a plain layer name (no wildcard, no regex): a rule that names one layer on purpose."""
        return not self.is_regex and not any(ch in self.pattern for ch in "*?[")

    @cached_property
    def _compiled(self) -> re.Pattern[str]:
        # Compiled once per selector: fnmatch's and re's own caches hold 32,768 and 512 patterns, and a policy
        # with more selectors than that recompiled every pattern for every layer.
        if self.is_regex:
            return re.compile(self.pattern[3:])
        return re.compile(fnmatch.translate(self.pattern))

    def matches(self, name: str) -> bool:
        if self.is_literal:
            return name == self.pattern
        return self._compiled.fullmatch(name) is not None

    def __str__(self) -> str:
        return self.pattern


@dataclass(frozen=True)
class Rule:
    """One ``[selector=]spec`` rule. ``selector`` None means a default rule."""

    block: BlockSpec
    selector: Selector | None = None

    def matches(self, *names: str) -> bool:
        if self.selector is None:
            return True
        return any(self.selector.matches(n) for n in names if n)

    def names_exactly(self, name: str) -> bool:
        """The rule's selector is this layer's literal name (so an ineligible layer is an error, not a skip)."""
        return self.selector is not None and self.selector.is_literal and self.selector.pattern == name

    def __str__(self) -> str:
        return str(self.block) if self.selector is None else f"{self.selector}={self.block}"


@dataclass(frozen=True)
class Policy:
    """Ordered rules, first match wins. Build with :func:`parse_policy` or from rules directly."""

    rules: tuple[Rule, ...]

    def __str__(self) -> str:
        return "; ".join(str(r) for r in self.rules)

    def first_match(self, *names: str, is_stem: bool = False) -> tuple[int, Rule] | None:
        """The first rule that matches any of ``names`` (index and rule), or None.

        Default rules never match the stem: the paper keeps it, and a user who wants it cheap says so by
        name.

        One pass: literal selectors (plain layer names) are looked up in a dict, and only the default and
        pattern rules before the first literal hit are tried in order, so a long policy of layer names costs
        one look-up per name, not one comparison per rule."""
        literal, patterned = self._index
        found = min((literal[n] for n in names if n in literal), default=len(self.rules))
        for i in patterned:
            if i >= found:
                break
            rule = self.rules[i]
            if rule.selector is None:
                if not is_stem:
                    return i, rule
            elif rule.matches(*names):
                return i, rule
        return (found, self.rules[found]) if found < len(self.rules) else None

    @cached_property
    def _index(self) -> tuple[dict[str, int], tuple[int, ...]]:
        """(literal selector -> index of its first rule, indices of the other rules in order)."""
        literal: dict[str, int] = {}
        patterned = []
        for i, rule in enumerate(self.rules):
            if rule.selector is not None and rule.selector.is_literal:
                literal.setdefault(rule.selector.pattern, i)
            else:
                patterned.append(i)
        return literal, tuple(patterned)

    def rounded(self, multiple: int | None) -> Policy:
        """The policy with every rule's inner widths rounded to multiples of ``multiple`` (``--round``); rules
        whose block has no inner width, or says its own ``@m``, stay as they are."""
        if multiple is None:
            return self
        return Policy(tuple(Rule(rounded(r.block, multiple), r.selector) for r in self.rules))

    @property
    def changes_anything(self) -> bool:
        return any(rule.block.level != "keep" for rule in self.rules)

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """Read a policy file: one rule per line, ``#`` comments and blank lines allowed.

        Only a regular UTF-8 file of at most :data:`POLICY_FILE_MAX_BYTES` is read (a FIFO, a device or a
        larger file is a :class:`~cheapconv.errors.UsageError`), and it may hold at most
        :data:`POLICY_MAX_RULES` rules."""
        text = read_text(path, what="the policy file", limit=POLICY_FILE_MAX_BYTES,
                         fix="Check the path, or pass the rules inline with --policy.")
        return parse_policy(text)


def _strip_comment(line: str) -> str:
    return line.split("#", 1)[0]


def parse_policy(text: str | Policy | BlockSpec) -> Policy:
    """Parse a policy string (or pass a Policy through; a BlockSpec becomes a one-rule policy).

    >>> str(parse_policy("conv1=keep;  layer4.*=BG(2, 4); G(4)"))
    'conv1=S; layer4.*=BG(2,4); G(4)'
    """
    if isinstance(text, Policy):
        return text
    if isinstance(text, BlockSpec):
        return Policy((Rule(text),))
    if not isinstance(text, str):
        raise UsageError(f"A policy is a string such as 'G(4)' or 'conv1=keep; G(4)', not {type(text).__name__}.")
    rules: list[Rule] = []
    offset = 0
    for line in text.splitlines(keepends=True):
        body = _strip_comment(line.rstrip("\n"))
        col = 0
        for piece in body.split(";"):
            start = offset + col
            if piece.strip():
                if len(rules) == POLICY_MAX_RULES:
                    raise PolicySyntaxError(f"The policy has more than {POLICY_MAX_RULES:,} rules, more than any "
                                            "model has layers: cheapconv reads no more. Use wildcards (layer4.*) "
                                            "or a default rule to cover many layers with one rule.")
                rules.append(_parse_rule(piece, text, start))
            col += len(piece) + 1
        offset += len(line)
    if not rules:
        raise PolicySyntaxError("The policy is empty. Give a block spec such as 'G(4)' or rules such as "
                                "'conv1=keep; G(4)'.")
    return Policy(tuple(rules))


def parse_policy_list(text: str) -> list[str]:
    """Split ``"G(2),G(4),BG(2,M)"`` at the commas outside parentheses; each item must parse as a policy
    (a sweep's list of block types).

    >>> parse_policy_list("G(2), G(N/8),BG(2,M)")
    ['G(2)', 'G(N/8)', 'BG(2,M)']
    """
    blocks = split_top_level(text, ",")
    if not blocks:
        raise UsageError(f"No block specs in {text!r}; give a comma-separated list such as 'G(2),G(4),B(2)'.")
    for b in blocks:
        parse_policy(b)  # raises PolicySyntaxError pointing at the column
    if len(set(blocks)) != len(blocks):
        raise UsageError(f"A block spec is listed twice in {text!r}.")
    return blocks


def _parse_rule(piece: str, source: str, start: int) -> Rule:
    if "=" not in piece:
        return Rule(parse_block(piece, source=source, offset=start))
    # Specs never contain '=', so the last '=' separates selector and spec (a regex may contain '=').
    eq = piece.rfind("=")
    selector_text = piece[:eq].strip()
    if not selector_text:
        lead = len(piece) - len(piece.lstrip())
        raise Parser(piece, source, start).fail("a rule 'SELECTOR=SPEC' needs a selector before '='", lead)
    if selector_text.startswith("re:"):
        try:
            re.compile(selector_text[3:])
        except re.error as e:
            lead = len(piece) - len(piece.lstrip())
            raise Parser(piece, source, start).fail(f"bad regular expression: {e}", lead + 3) from None
    block = parse_block(piece[eq + 1:], source=source, offset=start + eq + 1)
    return Rule(block, Selector(selector_text))
