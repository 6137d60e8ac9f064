"""Where each field of a job.conf is written: a field path -> LINE:COL index.

A `Locator` is built from the same text that was parsed, by walking the
tokens of protobuf's own text tokenizer (`text_format.Tokenizer`) along the
message descriptors. Every field occurrence is recorded under its path, in
the form `FindInitializationErrors()` uses:

    neuralnet                      (line/col of the field name)
    neuralnet.layer[3]             (the 4th `layer` of the net)
    neuralnet.layer[3].srclayers[1]
    neuralnet.layer[3].innerproduct_conf.num_output
    neuralnet.layer[3].[my.ext]    (an extension field)

A repeated field is also recorded without its index (its first occurrence).
`where(path)` gives `PATH:LINE:COL` for the path, or for its nearest located
ancestor when the field itself is not written (a missing required field is
reported where its enclosing message starts). Lines and columns count from 1.

The locator only reads text that already parsed; it never raises on odd
input (it stops indexing instead).
"""
from __future__ import annotations

import re

from google.protobuf import descriptor as _descriptor
from google.protobuf import text_format

_INDEX = re.compile(r"\[\d+\]$")
_MESSAGE = _descriptor.FieldDescriptor.CPPTYPE_MESSAGE


class Locator:
    """Field path -> (line, col), both from 1, for one job.conf text."""

    def __init__(self, text: str, descriptor: _descriptor.Descriptor, path: str = "<text>"):
        self.path = path
        self.text = text
        self.positions: dict[str, tuple[int, int]] = {}
        try:
            tok = text_format.Tokenizer(text.split("\n"))
            _Walker(tok, self.positions).message(descriptor, "", top=True)
        except Exception:  # noqa: BLE001 - partial index is fine; parse errors are reported by parse.py
            pass

    # --------------------------------------------------------------- query ---
    def find(self, field_path: str) -> tuple[int, int] | None:
        """(line, col) of `field_path` or of its nearest located ancestor."""
        p = field_path
        while p:
            if p in self.positions:
                return self.positions[p]
            # an unwritten index (param[2] of a layer with two params) is not
            # the field's first occurrence: go to the enclosing message
            p = _INDEX.sub("", p).rpartition(".")[0]
        return None

    def exact(self, field_path: str) -> tuple[int, int] | None:
        """(line, col) of exactly `field_path`, or None if it is not written."""
        return self.positions.get(field_path)

    def where(self, field_path: str) -> str:
        """`PATH:LINE:COL` of the field (or its nearest written ancestor); `PATH` if none."""
        pos = self.find(field_path)
        if pos is None:
            return self.path
        return f"{self.path}:{pos[0]}:{pos[1]}"

    def __contains__(self, field_path: str) -> bool:
        return field_path in self.positions


class _Walker:
    """Follows the token stream as text_format's parser does, recording positions."""

    def __init__(self, tok: text_format.Tokenizer, positions: dict[str, tuple[int, int]]):
        self.tok = tok
        self.pos = positions

    def _here(self) -> tuple[int, int]:
        return self.tok._line + 1, self.tok._column + 1  # only the tokenizer knows

    def _record(self, path: str, at: tuple[int, int]) -> None:
        self.pos.setdefault(path, at)

    def message(self, desc: _descriptor.Descriptor | None, prefix: str, top: bool = False) -> None:
        tok = self.tok
        counts: dict[str, int] = {}
        end = ("",) if top else ("}", ">")
        while not tok.AtEnd() and tok.token not in end:
            at = self._here()
            field = None
            if tok.TryConsume("["):
                parts = []
                while not tok.AtEnd() and tok.token != "]":
                    parts.append(tok.token)
                    tok.NextToken()
                tok.TryConsume("]")
                name = "[" + "".join(parts) + "]"
            else:
                name = tok.token
                tok.NextToken()
                if desc is not None:
                    field = desc.fields_by_name.get(name) or desc.fields_by_name.get(name.lower())
            base = f"{prefix}.{name}" if prefix else name
            repeated = field is not None and field.is_repeated
            sub = field.message_type if field is not None and field.cpp_type == _MESSAGE else None

            tok.TryConsume(":")
            if tok.token == "[" and name[0] != "[":
                # short list form: field: [v1, v2] or field: [{...}, {...}]
                tok.NextToken()
                while not tok.AtEnd() and tok.token != "]":
                    self._value(base, counts, name, repeated, sub, self._here())
                    if not tok.TryConsume(","):
                        break
                tok.TryConsume("]")
            else:
                self._value(base, counts, name, repeated, sub, at)
            if not tok.TryConsume(","):
                tok.TryConsume(";")

    def _value(self, base: str, counts: dict[str, int], name: str, repeated: bool,
               sub: _descriptor.Descriptor | None, at: tuple[int, int]) -> None:
        tok = self.tok
        if repeated:
            k = counts.get(name, 0)
            counts[name] = k + 1
            path = f"{base}[{k}]"
            self._record(base, at)
        else:
            path = base
        self._record(path, at)
        if tok.token in ("{", "<"):
            close = "}" if tok.token == "{" else ">"
            tok.NextToken()
            self.message(sub, path)
            tok.TryConsume(close)
        elif tok.token[:1] in ("'", '"'):
            while tok.token[:1] in ("'", '"'):  # adjacent strings concatenate
                tok.NextToken()
        else:
            if tok.token == "-":
                tok.NextToken()
            tok.NextToken()
