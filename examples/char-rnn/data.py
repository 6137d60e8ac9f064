#!/usr/bin/env python3
"""Build the char-rnn corpus and vocabulary from the Python standard
library's own source files: real code, present wherever Python is.

    python examples/char-rnn/data.py [--out DIR] [--modules a,b,...]

writes into DIR (default: this script's directory)
  input.txt   the sources of MODULES, in the order listed, each preceded by
              a line `# ---- <module> ----` and followed by a blank line;
  vocab.txt   the 96 characters "\\n" and the printable ASCII range
              " " (32) to "~" (126), in that order; a character's index is
              its position (what kCharRNN and kCharRNNOutput expect).

The text is made to fit the fixed vocabulary, so that job.conf's sizes
(onehot_conf.vocab_size and the output layer's num_output, 96) hold on
every Python version: tabs become 4 spaces, carriage returns and form feeds
are dropped, any other character outside the vocabulary becomes "?".

The set of modules is fixed (MODULES below) and each is found by name with
importlib, so the corpus is the same on every machine with the same Python
version; other versions give the same modules in their own revision. The
script prints the Python version, the size and the SHA-256 of the corpus.
It uses only the standard library.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import os
import sys

# Pure-Python modules written mostly as classes (so `self.` is common),
# present in every Python 3 release since 3.8. About 1.3 MB on 3.11.
MODULES = (
    "argparse", "calendar", "configparser", "difflib", "ftplib", "gettext",
    "imaplib", "mailbox", "optparse", "queue", "sched", "shlex", "smtplib",
    "socketserver", "string", "tarfile", "tempfile", "textwrap", "threading",
    "wave", "zipfile", "http.client", "http.server", "email.message",
    "unittest.case", "json.decoder", "json.encoder", "logging",
)

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))


def module_source(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise SystemExit(f"data.py: module {name!r} has no Python source file here "
                         f"({spec.origin if spec else 'not found'})")
    with open(spec.origin, encoding="utf-8", errors="replace") as f:
        return f.read()


def clean(text: str) -> str:
    """The text in the vocabulary's characters (see the module docstring)."""
    text = text.replace("\t", "    ").replace("\r", "").replace("\f", "")
    allowed = set(VOCAB)
    return "".join(c if c in allowed else "?" for c in text)


def build(modules: list[str]) -> str:
    parts = []
    for name in modules:
        parts.append(f"# ---- {name} ----\n")
        parts.append(clean(module_source(name)).rstrip("\n") + "\n\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=here, help="directory for input.txt and vocab.txt")
    ap.add_argument("--modules", default=",".join(MODULES),
                    help="comma-separated module names (default: the fixed set)")
    args = ap.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    text = build(modules)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "input.txt"), "w", encoding="ascii", newline="") as f:
        f.write(text)
    with open(os.path.join(args.out, "vocab.txt"), "w", encoding="ascii", newline="") as f:
        f.write(VOCAB)
    digest = hashlib.sha256(text.encode("ascii")).hexdigest()
    print(f"Python {sys.version.split()[0]}: {len(modules)} modules, {len(text)} characters, "
          f"{text.count(chr(10))} lines")
    print(f"vocabulary: {len(VOCAB)} characters (ln {len(VOCAB)} = {math.log(len(VOCAB)):.3f} "
          "nats, the loss of a uniform guess)")
    print(f"sha256 {digest}")
    print(f"wrote {os.path.join(args.out, 'input.txt')} and {os.path.join(args.out, 'vocab.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
