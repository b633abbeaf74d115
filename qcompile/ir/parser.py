"""Parser for the IR's text form (grammar in docs/ir.md): a hand-written tokenizer and a
recursive-descent parser that rebuilds the graph through the Graph API.

Attributes are checked against the op registry as they are read, so a typo points at the
attribute, not at some later pass. Output types are taken from the text, not re-inferred: the
verifier can then compare them with inference. Every error is a `ParseError` carrying the line
and column of the offending token.
"""
from __future__ import annotations

import bisect
import difflib
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..errors import OpError, ParseError
from .graph import Graph, Node, Value
from .ops import registry
from .types import DTYPES, QuantParams, TensorType, int_bits, int_range, is_float, \
    is_narrow_float, is_signed, numpy_dtype

# ---- tokens ---------------------------------------------------------------------------------
# kinds: NAME (%x), GNAME (@g), STRING, NUMBER, WORD, TYPE (tensor<...>), PUNCT, EOF


@dataclass
class Token:
    kind: str
    text: str    # the raw source text
    value: Any   # decoded: name/string contents, number, the type body
    pos: int     # offset into the source


_BARE_NAME = re.compile(r"[A-Za-z0-9_.$:/\-]*[A-Za-z0-9_.$/\-]")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|inf|nan)(?![A-Za-z0-9_.])")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_DIGIT_WORD = re.compile(r"[0-9][0-9A-Za-z_]*")   # hex digests such as 1a2b3c...
_INT_TEXT = re.compile(r"-?\d+$")
_PUNCT = set("(){}[]<>,=:")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


class _Source:
    """The text plus line bookkeeping, so any offset becomes (line, column) for errors."""

    def __init__(self, text: str, filename: str):
        self.text, self.filename = text, filename
        self.line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    def error(self, message: str, pos: int) -> ParseError:
        line = bisect.bisect_right(self.line_starts, pos)
        column = pos - self.line_starts[line - 1] + 1
        return ParseError(message, self.text, line, column, self.filename)

    def line_of(self, pos: int) -> int:
        return bisect.bisect_right(self.line_starts, pos)


def tokenize(src: _Source) -> list[Token]:
    text, n, i = src.text, len(src.text), 0
    tokens: list[Token] = []
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if text.startswith("//", i):  # comment to end of line (hand-written tests use them)
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if i >= n:
            # EOF sits just after the last real character, so "missing }" points at real text.
            tokens.append(Token("EOF", "", None, len(text.rstrip())))
            return tokens
        c = text[i]
        if c in "%@":
            kind = "NAME" if c == "%" else "GNAME"
            if text.startswith('"', i + 1):
                s, j = _read_string(src, i + 1)
            else:
                m = _BARE_NAME.match(text, i + 1)
                if not m:
                    raise src.error(f"expected a name after '{c}'", i)
                s, j = m.group(), m.end()
            tokens.append(Token(kind, text[i:j], s, i))
            i = j
        elif c == '"':
            s, j = _read_string(src, i)
            tokens.append(Token("STRING", text[i:j], s, i))
            i = j
        elif text.startswith("tensor<", i):
            j = i + len("tensor<")
            while j < n and (text[j].isascii() and text[j].isalnum() or text[j] == "?"):
                j += 1
            if j >= n or text[j] != ">":
                raise src.error("expected '>' to close tensor<...> (dims like 2x?x3, then a "
                                "dtype: tensor<2x?x3xf32>)", j)
            tokens.append(Token("TYPE", text[i:j + 1], text[i + 7:j], i))
            i = j + 1
        elif text.startswith("->", i):
            tokens.append(Token("PUNCT", "->", "->", i))
            i += 2
        elif (m := _NUMBER.match(text, i)) is not None:
            tokens.append(Token("NUMBER", m.group(), _number(m.group()), i))
            i = m.end()
        elif (m := _DIGIT_WORD.match(text, i) or _WORD.match(text, i)) is not None:
            tokens.append(Token("WORD", m.group(), m.group(), i))
            i = m.end()
        elif c in _PUNCT:
            tokens.append(Token("PUNCT", c, c, i))
            i += 1
        else:
            raise src.error(f"unexpected character {c!r}", i)


def _number(text: str) -> Any:
    try:
        return int(text) if _INT_TEXT.match(text) else float(text)
    except ValueError:  # an integer too long for Python's int-from-text limit
        return float(text)


def _read_string(src: _Source, start: int) -> tuple[str, int]:
    """Decode the string literal whose opening quote is at `start`; returns (value, end)."""
    text, i, out = src.text, start + 1, []
    while True:
        if i >= len(text) or text[i] == "\n":
            raise src.error("unterminated string", start)
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = text[i + 1] if i + 1 < len(text) else ""
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in _HEX_ESCAPES:
            digits = text[i + 2:i + 2 + _HEX_ESCAPES[e]]
            if len(digits) != _HEX_ESCAPES[e] or not re.fullmatch(r"[0-9a-fA-F]+", digits):
                raise src.error(f"bad \\{e} escape: expected {_HEX_ESCAPES[e]} hex digits", i)
            out.append(chr(int(digits, 16)))
            i += 2 + len(digits)
        else:
            raise src.error(f"unknown escape '\\{e}' in string", i)


# ---- the parser -----------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str, filename: str, data_dir: Optional[str]):
        self.src = _Source(text, filename)
        self.toks = tokenize(self.src)
        self.k = 0
        self.data_dir = data_dir
        self.graph = Graph()
        self.defined_at: dict[str, int] = {}   # value name -> line of its definition
        self.npz_cache: dict[str, Any] = {}

    # -- token helpers --
    @property
    def tok(self) -> Token:
        return self.toks[self.k]

    def peek(self, ahead: int = 1) -> Token:
        return self.toks[min(self.k + ahead, len(self.toks) - 1)]

    def advance(self) -> Token:
        t = self.toks[self.k]
        if t.kind != "EOF":
            self.k += 1
        return t

    def error(self, message: str, tok: Optional[Token] = None) -> ParseError:
        return self.src.error(message, (tok or self.tok).pos)

    def at(self, text: str) -> bool:
        return self.tok.kind in ("PUNCT", "WORD") and self.tok.text == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.advance()
            return True
        return False

    def expect(self, text: str, context: str = "") -> Token:
        if not self.at(text):
            raise self.error(f"expected '{text}'{context}, found {self.describe(self.tok)}")
        return self.advance()

    def expect_kind(self, kind: str, what: str) -> Token:
        if self.tok.kind != kind:
            raise self.error(f"expected {what}, found {self.describe(self.tok)}")
        return self.advance()

    @staticmethod
    def describe(t: Token) -> str:
        return "end of input" if t.kind == "EOF" else repr(t.text)

    # -- graph --
    def parse_graph(self) -> Graph:
        self.expect("graph", " at the start of a graph")
        name_tok = self.expect_kind("GNAME", "a graph name like @main")
        g = self.graph
        g.name = name_tok.value
        self.expect("(")
        if not self.at(")"):
            while True:
                self.parse_input()
                if not self.accept(","):
                    break
        self.expect(")", " after the graph inputs")
        self.expect("->")
        self.expect("(")
        header_outs: list[Token] = []
        if not self.at(")"):
            while True:
                header_outs.append(self.expect_kind("NAME", "an output name"))
                if not self.accept(","):
                    break
        self.expect(")", " after the graph outputs")
        self.expect("{")
        while not self.at("return"):
            if self.tok.kind == "EOF" or self.at("}"):
                raise self.error(f"expected 'return' before the end of graph @{g.name}, "
                                 f"found {self.describe(self.tok)}")
            self.parse_statement()
        ret = self.advance()
        outs: list[Token] = []
        if self.tok.kind == "NAME":
            while True:
                outs.append(self.expect_kind("NAME", "an output name"))
                if not self.accept(","):
                    break
        if [t.value for t in outs] != [t.value for t in header_outs]:
            raise self.error(f"return lists ({', '.join('%' + t.value for t in outs)}) but the "
                             f"graph header declares "
                             f"({', '.join('%' + t.value for t in header_outs)})", ret)
        g.outputs = [self.lookup(t) for t in outs]
        if not self.at("}"):
            raise self.error(f"expected '}}' to close graph @{g.name}, "
                             f"found {self.describe(self.tok)}")
        self.advance()
        if self.tok.kind != "EOF":
            raise self.error(f"unexpected {self.describe(self.tok)} after the end of graph @{g.name}")
        return g

    def parse_input(self) -> None:
        name = self.expect_kind("NAME", "an input name like %x")
        self.expect(":", f" after input %{name.value}")
        ttype, quant = self.parse_typed()
        self.define(name)
        self.graph.add_input(name.value, ttype, quant)

    def parse_statement(self) -> None:
        results: list[Token] = []
        if self.tok.kind == "NAME":
            while True:
                results.append(self.expect_kind("NAME", "a result name"))
                if not self.accept(","):
                    break
            self.expect("=", " after the result names")
        if self.at("const") and self.peek().kind == "TYPE":
            if len(results) != 1:
                raise self.error("a constant defines exactly one value")
            self.advance()
            self.parse_constant(results[0])
        else:
            self.parse_node(results)

    # -- values --
    def define(self, tok: Token) -> None:
        if not tok.value:
            raise self.error("a value name cannot be empty", tok)
        if tok.value in self.defined_at:
            raise self.error(f"value %{tok.value} is already defined "
                             f"(line {self.defined_at[tok.value]})", tok)
        self.defined_at[tok.value] = self.src.line_of(tok.pos)

    def lookup(self, tok: Token) -> Value:
        v = self.graph.values.get(tok.value)
        if v is None or tok.value not in self.defined_at:
            close = difflib.get_close_matches(tok.value, list(self.defined_at), n=3)
            hint = f" (did you mean {', '.join('%' + c for c in close)}?)" if close else ""
            raise self.error(f"undefined value %{tok.value}{hint}", tok)
        return v

    # -- types --
    def parse_typed(self) -> tuple[TensorType, Optional[QuantParams]]:
        ttype = self.parse_type()
        quant = self.parse_quant() if self.at("quant") else None
        return ttype, quant

    def parse_type(self) -> TensorType:
        tok = self.expect_kind("TYPE", "a type like tensor<2x3xf32>")
        body = tok.value
        parts = body.split("x")
        offset = tok.pos + len("tensor<")
        dims: list = []
        for part in parts[:-1]:
            if part == "?":
                dims.append(None)
            elif part.isascii() and part.isdigit():
                dims.append(int(part))
            else:
                raise self.src.error(f"bad dimension {part!r}: expected a size or '?'", offset)
            offset += len(part) + 1
        dtype = parts[-1]
        if dtype not in DTYPES:
            close = difflib.get_close_matches(dtype, DTYPES, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise self.src.error(f"unknown dtype {dtype!r}{hint}; expected one of "
                                 f"{', '.join(DTYPES)}", offset)
        return TensorType(tuple(dims), dtype)

    def parse_quant(self) -> QuantParams:
        start = self.expect("quant")
        self.expect("<", " after 'quant'")
        fields: dict[str, Any] = {}
        while True:
            key_tok = self.tok
            key = self.expect_kind("WORD", "a quant field (scale=, zp=, a dtype like i8, axis=, pow2)").text
            if key in fields or (re.fullmatch(r"[iu]\d+", key) and "dtype" in fields):
                raise self.error(f"quant field {key!r} given twice", key_tok)
            if key in ("scale", "zp"):
                self.expect("=")
                fields[key] = self.parse_number_or_list(float if key == "scale" else int)
            elif key == "axis":
                self.expect("=")
                fields[key] = self.parse_int()
            elif key == "pow2":
                fields[key] = True
            elif re.fullmatch(r"[iu]\d+", key):
                fields["dtype"] = key
            else:
                raise self.error(f"unknown quant field {key!r}; expected scale=, zp=, a storage "
                                 f"dtype like i8 or u4, axis= or pow2", key_tok)
            if not self.accept(","):
                break
        self.expect(">", " to close quant<...>")
        for need in ("scale", "zp", "dtype"):
            if need not in fields:
                what = "storage dtype (like i8)" if need == "dtype" else f"'{need}='"
                raise self.error(f"quant<...> is missing its {what}", start)
        dt = fields["dtype"]
        return QuantParams(fields["scale"], fields["zp"], bits=int(dt[1:]), signed=dt[0] == "i",
                           axis=fields.get("axis"), pow2=fields.get("pow2", False))

    def parse_int(self) -> int:
        tok = self.expect_kind("NUMBER", "an integer")
        if not isinstance(tok.value, int):
            raise self.error(f"expected an integer, found {tok.text}", tok)
        return tok.value

    def parse_number_or_list(self, kind: type) -> list:
        if not self.accept("["):
            return [self.parse_scalar(kind)]
        items = []
        if not self.at("]"):
            while True:
                items.append(self.parse_scalar(kind))
                if not self.accept(","):
                    break
        self.expect("]", " to close the list")
        return items

    def parse_scalar(self, kind: type) -> Any:
        tok = self.expect_kind("NUMBER", "a number")
        if kind is int and not isinstance(tok.value, int):
            raise self.error(f"expected an integer, found {tok.text}", tok)
        return kind(tok.value)

    # -- constants --
    def parse_constant(self, name: Token) -> None:
        ttype, quant = self.parse_typed()
        if not ttype.is_static:
            raise self.error(f"constant %{name.value} needs a static shape, not "
                             f"{self.toks[self.k - 1].text}", name)
        self.expect("dense", f" (the data of constant %{name.value})")
        self.expect("<", " after 'dense'")
        self.define(name)
        g = self.graph
        if self.at("sha256"):
            v = Value(name.value, ttype, quant)
            v.data_hash = self.parse_summary()
            g.values[v.name] = v
            g.constants[v.name] = v
            g.version += 1
        else:
            data = self.parse_file_ref(ttype) if self.at("file") else self.parse_elements(ttype, name)
            g.add_constant(name.value, data, dtype=ttype.dtype, quant=quant)
        self.expect(">", " to close dense<...>")

    def parse_summary(self) -> str:
        """`sha256:HEX[, min=A, max=B]`, kept as the canonical text it prints back as."""
        self.expect("sha256")
        self.expect(":")
        tok = self.tok
        if tok.kind not in ("WORD", "NUMBER") or not re.fullmatch(r"[0-9a-f]+", tok.text):
            raise self.error(f"expected a hex digest after 'sha256:', found {self.describe(tok)}")
        self.advance()
        text = f"sha256:{tok.text}"
        if self.accept(","):
            self.expect("min")
            self.expect("=")
            lo = self.expect_kind("NUMBER", "a number").text
            self.expect(",")
            self.expect("max")
            self.expect("=")
            hi = self.expect_kind("NUMBER", "a number").text
            text += f", min={lo}, max={hi}"
        return text

    def parse_file_ref(self, ttype: TensorType) -> np.ndarray:
        self.expect("file")
        self.expect("=")
        file_tok = self.expect_kind("STRING", "a file name string")
        self.expect(",")
        self.expect("key")
        self.expect("=")
        key_tok = self.expect_kind("STRING", "a key string")
        archive = self.load_npz(file_tok)
        if key_tok.value not in archive:
            raise self.error(f"no array {key_tok.value!r} in {file_tok.value}", key_tok)
        arr = archive[key_tok.value]
        want = numpy_dtype(ttype.dtype)
        if tuple(arr.shape) != ttype.shape or arr.dtype != want:
            raise self.error(f"array {key_tok.value!r} in {file_tok.value} is {arr.dtype} "
                             f"{tuple(arr.shape)}, but the type says {want} {ttype.shape}", key_tok)
        return arr

    def load_npz(self, file_tok: Token) -> Any:
        path = file_tok.value
        if self.data_dir is not None and not os.path.isabs(path):
            path = os.path.join(self.data_dir, path)
        if path not in self.npz_cache:
            try:
                with np.load(path, allow_pickle=False) as z:
                    self.npz_cache[path] = {k: z[k] for k in z.files}
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                raise self.error(f"cannot read constant data file {path}: {exc}", file_tok) from None
        return self.npz_cache[path]

    def parse_elements(self, ttype: TensorType, name: Token) -> np.ndarray:
        start = self.expect("[", " (inline data, a summary sha256:..., or file=...)")
        dtype = ttype.dtype
        items: list = []
        if not self.at("]"):
            while True:
                items.append(self.parse_element(dtype))
                if not self.accept(","):
                    break
        self.expect("]", " to close the data list")
        if len(items) != ttype.numel:
            raise self.error(f"constant %{name.value} has {len(items)} elements but its type "
                             f"holds {ttype.numel}", start)
        floatlike = is_float(dtype) or is_narrow_float(dtype)
        arr = np.array(items, dtype=np.float64 if floatlike else object)
        return arr.astype(numpy_dtype(dtype)).reshape(ttype.shape)

    def parse_element(self, dtype: str) -> Any:
        tok = self.tok
        if dtype == "bool":
            if self.accept("true"):
                return True
            if self.accept("false"):
                return False
            raise self.error(f"expected true or false, found {self.describe(tok)}")
        tok = self.expect_kind("NUMBER", f"a {dtype} number")
        if is_float(dtype) or is_narrow_float(dtype):
            return float(tok.value)
        if not isinstance(tok.value, int):
            raise self.error(f"expected an integer for {dtype} data, found {tok.text}", tok)
        bits, signed = (64, True) if dtype == "i64" else (int_bits(dtype), is_signed(dtype))
        lo, hi = int_range(bits, signed)
        if not lo <= tok.value <= hi:
            raise self.error(f"{tok.value} does not fit {dtype} [{lo}, {hi}]", tok)
        return tok.value

    # -- nodes --
    def parse_node(self, results: list[Token]) -> None:
        op_tok = self.tok
        if op_tok.kind != "WORD":
            raise self.error(f"expected an op name, found {self.describe(op_tok)}")
        self.advance()
        try:
            opdef = registry.get(op_tok.text)
        except OpError as exc:
            raise self.error(str(exc), op_tok) from None
        where = f"%{results[0].value}" if results else op_tok.text
        self.expect("(", f" after op {op_tok.text}")
        inputs: list[Optional[Value]] = []
        if not self.at(")"):
            while True:
                if self.accept("_"):
                    inputs.append(None)
                else:
                    inputs.append(self.lookup(self.expect_kind("NAME", "an operand (%name or _)")))
                if not self.accept(","):
                    break
        self.expect(")", " after the operands")
        if not opdef.arity_ok(len(inputs)):
            raise self.error(f"op {opdef.name} takes inputs ({', '.join(opdef.inputs)}), "
                             f"got {len(inputs)}", op_tok)
        attrs = self.parse_attrs(opdef, where, op_tok) if self.at("{") else \
            self.complete_attrs(opdef, {}, where, op_tok)
        outs: list[Value] = []
        if results:
            self.expect(":", " and the result types")
            while True:
                ttype, quant = self.parse_typed()
                outs.append(Value("", ttype, quant))
                if not self.accept(","):
                    break
            if len(outs) != len(results):
                raise self.error(f"{len(results)} results but {len(outs)} types", results[0])
        loc = ""
        if self.accept("loc"):
            self.expect("(")
            loc = self.expect_kind("STRING", "a location string").value
            self.expect(")")
        for tok, v in zip(results, outs):
            self.define(tok)
            v.name = tok.value
        self.graph.append(Node(opdef.name, inputs, outs, attrs, loc))

    def parse_attrs(self, opdef, where: str, op_tok: Token) -> dict:
        self.expect("{")
        given: dict[str, Any] = {}
        if not self.at("}"):
            while True:
                key_tok = self.tok
                if key_tok.kind not in ("WORD", "STRING"):
                    raise self.error(f"expected an attribute name, found {self.describe(key_tok)}")
                self.advance()
                key = key_tok.value
                if key in given:
                    raise self.error(f"attribute '{key}' given twice", key_tok)
                if key not in opdef.attrs:
                    close = difflib.get_close_matches(key, list(opdef.attrs), n=3)
                    hint = f" (did you mean {', '.join(close)}?)" if close else ""
                    raise self.error(f"{where}: unknown attribute '{key}' for op {opdef.name}"
                                     f"{hint}; {opdef.schema()}", key_tok)
                self.expect("=", f" after attribute '{key}'")
                value_tok = self.tok
                value = self.parse_literal()
                try:
                    given[key] = opdef.attrs[key].check(key, value, where)
                except OpError as exc:
                    raise self.error(str(exc), value_tok) from None
                if not self.accept(","):
                    break
        self.expect("}", " to close the attributes")
        return self.complete_attrs(opdef, given, where, op_tok)

    def complete_attrs(self, opdef, given: dict, where: str, op_tok: Token) -> dict:
        try:
            return opdef.complete_attrs(given, where)
        except OpError as exc:
            raise self.error(str(exc), op_tok) from None

    def parse_literal(self) -> Any:
        tok = self.tok
        if tok.kind in ("NUMBER", "STRING"):
            self.advance()
            return tok.value
        if self.accept("true"):
            return True
        if self.accept("false"):
            return False
        if self.accept("["):
            items = []
            if not self.at("]"):
                while True:
                    items.append(self.parse_literal())
                    if not self.accept(","):
                        break
            self.expect("]", " to close the list")
            return items
        raise self.error(f"expected an attribute value (number, string, true/false or a list), "
                         f"found {self.describe(tok)}")


def parse(text: str, filename: str = "<string>", data_dir: Optional[str] = None) -> Graph:
    """Parse the text form into a `Graph`. `data_dir` is where `dense<file=...>` data files are
    looked up (default: the current directory). Raises `ParseError` with line and column."""
    return _Parser(text, filename, data_dir).parse_graph()


def parse_file(path) -> Graph:
    """Parse a `.qir` file; the `.npz` files it refers to are found next to it."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}", filename=path) from None
    return parse(text, filename=path, data_dir=os.path.dirname(path) or ".")


__all__ = ["parse", "parse_file", "tokenize", "Token"]
