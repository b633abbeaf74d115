"""Pipelines: a sequence of pass instances and fixpoint groups, written as a string.

Grammar (whitespace is allowed between tokens):

    pipeline := [item (',' item)*]
    item     := 'fixpoint' [options] '(' pipeline ')' | NAME [options]
    options  := '{' [NAME '=' value (',' NAME '=' value)*] '}'
    value    := '[' [value (',' value)*] ']' | "quoted" | 'quoted' | bare
    NAME     := [A-Za-z_][A-Za-z0-9_.-]*       bare := any run of characters but ,{}[]()=" ' space

`str(pipeline)` is the canonical form: options that differ from their defaults, no spaces;
`parse_pipeline(str(p)) == p`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Union

from ..errors import PipelineError
from .options import Raw
from .registry import Pass, get_pass, pass_info

DEFAULT_FIXPOINT_MAX = 10


@dataclass(frozen=True)
class Fixpoint:
    """A group of items repeated until no pass in it changes the graph (at most `max_iterations`)."""

    items: tuple
    max_iterations: int = DEFAULT_FIXPOINT_MAX

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(_as_item(i) for i in self.items))
        if not isinstance(self.max_iterations, int) or self.max_iterations < 1:
            raise PipelineError(f"fixpoint: max must be a positive int, got {self.max_iterations!r}")

    def __str__(self) -> str:
        opts = "" if self.max_iterations == DEFAULT_FIXPOINT_MAX else f"{{max={self.max_iterations}}}"
        return f"fixpoint{opts}(" + ",".join(str(i) for i in self.items) + ")"


Item = Union[Pass, Fixpoint]


@dataclass(frozen=True)
class Pipeline:
    """An ordered tuple of passes and fixpoint groups; build one with `parse_pipeline` or
    `Pipeline.of([...])` from pass instances, pass names/strings and registered functions."""

    items: tuple = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(_as_item(i) for i in self.items))

    @classmethod
    def of(cls, items: Union[str, "Pipeline", Iterable[Any]]) -> "Pipeline":
        if isinstance(items, Pipeline):
            return items
        if isinstance(items, str):
            return parse_pipeline(items)
        flat: list = []
        for item in items:
            flat.extend(parse_pipeline(item).items if isinstance(item, str) else [item])
        return cls(tuple(flat))

    def __str__(self) -> str:
        return ",".join(str(i) for i in self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def pass_names(self) -> list[str]:
        """Every pass name in order, fixpoint groups flattened."""
        out: list[str] = []
        for item in self.items:
            out.extend(Pipeline(item.items).pass_names() if isinstance(item, Fixpoint)
                       else [pass_info(item).name])
        return out


def _as_item(item: Any) -> Item:
    if isinstance(item, (Pass, Fixpoint)):
        return item
    if isinstance(item, type) and issubclass(item, Pass):
        return pass_info(item).create()
    if callable(item) and hasattr(item, "__qcompile_pass__"):
        return item.__qcompile_pass__.create()
    raise TypeError(f"{item!r} is not a pass: use a pass instance, a registered pass or a "
                    f"pipeline string")


def parse_pipeline(text: str) -> Pipeline:
    """Parse a pipeline string; PipelineError with the column and a caret on any fault."""
    return _Parser(text).parse()


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_BARE = re.compile(r"[^\s,{}\[\]()=\"']+")


class _Parser:
    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def fail(self, message: str, pos: int | None = None, syntax: bool = True) -> PipelineError:
        pos = self.pos if pos is None else pos
        kind = "malformed pipeline" if syntax else "pipeline"
        return PipelineError(f"{kind} at column {pos + 1}: {message}\n"
                             f"  {self.text}\n  {' ' * pos}^")

    def _found(self) -> str:
        return f"found '{self.text[self.pos]}'" if self.pos < len(self.text) else "found the end"

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str, context: str) -> None:
        if self.peek() != ch:
            raise self.fail(f"expected '{ch}' {context}, {self._found()}")
        self.pos += 1

    def parse(self) -> Pipeline:
        if not self.text.strip():
            return Pipeline(())
        items = self.items(closing="")
        if self.peek():
            raise self.fail(f"expected ',' or the end, {self._found()}")
        return Pipeline(tuple(items))

    def items(self, closing: str) -> list:
        out = [self.item()]
        while self.peek() == ",":
            self.pos += 1
            out.append(self.item())
        if closing and self.peek() != closing:
            raise self.fail(f"expected ',' or '{closing}', {self._found()}")
        return out

    def name(self, what: str) -> tuple[str, int]:
        self.skip_ws()
        m = _NAME.match(self.text, self.pos)
        if not m:
            raise self.fail(f"expected {what}, {self._found()}")
        self.pos = m.end()
        return m.group(), m.start()

    def item(self) -> Item:
        name, start = self.name("a pass name")
        options = self.options() if self.peek() == "{" else []
        if name == "fixpoint":
            return self.fixpoint(options)
        try:
            info = get_pass(name)
        except PipelineError as exc:
            raise self.fail(str(exc), start, syntax=False) from None
        try:
            return info.create(**{k: v for k, v, _, _ in options})
        except PipelineError as exc:
            msg = str(exc)
            # point at the option the message is about: its name if unknown, else its value
            bad = [kp if "no option" in msg else vp
                   for k, _, kp, vp in options if f"option '{k}'" in msg]
            raise self.fail(msg, bad[0] if bad else start, syntax=False) from None

    def fixpoint(self, options: list) -> Fixpoint:
        max_iterations = DEFAULT_FIXPOINT_MAX
        for key, value, kpos, vpos in options:
            if key != "max":
                raise self.fail(f"fixpoint has one option, max (an int), not '{key}'", kpos,
                                syntax=False)
            if not (isinstance(value, Raw) and not value.quoted and value.text.isdigit()
                    and int(value.text) >= 1):
                raise self.fail(f"fixpoint option max must be a positive int, got {value}", vpos,
                                syntax=False)
            max_iterations = int(value.text)
        self.expect("(", "after 'fixpoint' to open its group")
        items = self.items(closing=")")
        self.pos += 1
        return Fixpoint(tuple(items), max_iterations)

    def options(self) -> list[tuple[str, Any, int, int]]:
        self.expect("{", "")
        out: list[tuple[str, Any, int, int]] = []
        seen: set[str] = set()
        if self.peek() == "}":
            self.pos += 1
            return out
        while True:
            key, kpos = self.name("an option name")
            if key in seen:
                raise self.fail(f"option '{key}' is given twice", kpos)
            seen.add(key)
            self.expect("=", f"after option name '{key}'")
            self.skip_ws()
            vpos = self.pos
            out.append((key, self.value(), kpos, vpos))
            ch = self.peek()
            if ch == "}":
                self.pos += 1
                return out
            if ch != ",":
                raise self.fail(f"expected ',' or '}}' in options, {self._found()}")
            self.pos += 1

    def value(self) -> Any:
        ch = self.peek()
        if ch == "[":
            self.pos += 1
            values: list = []
            if self.peek() == "]":
                self.pos += 1
                return values
            while True:
                values.append(self.value())
                ch = self.peek()
                self.pos += 1
                if ch == "]":
                    return values
                if ch != ",":
                    self.pos -= 1
                    raise self.fail(f"expected ',' or ']' in a list, {self._found()}")
        if ch in ("'", '"'):
            return self.quoted(ch)
        m = _BARE.match(self.text, self.pos)
        if not m:
            raise self.fail(f"expected a value, {self._found()}")
        self.pos = m.end()
        return Raw(m.group())

    def quoted(self, quote: str) -> Raw:
        start = self.pos
        self.pos += 1
        chars: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                chars.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            self.pos += 1
            if ch == quote:
                return Raw("".join(chars), quoted=True)
            chars.append(ch)
        raise self.fail("unterminated string", start)
