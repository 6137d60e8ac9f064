#!/usr/bin/env python3
"""Build the rnnlm corpus from the docstrings of the Python standard
library: English prose about programming, present wherever Python is.

    python examples/rnnlm/data.py [--out DIR] [--vocab N]

writes into DIR (default: this script's directory)
  train.txt   the words of 9 docstrings in 10, one docstring a line,
              each ended by the token </s>;
  valid.txt   the words of the other docstrings (every 10th), the same way;
  vocab.txt   the N (default 2000) vocabulary words, one a line as
              `word count`, most frequent first (ties by word); the last
              is <unk>, which every other word of the corpus becomes. A
              word's index is its line number from 0 (what the data layer
              and the loss layer of rnnlm.py use).

Words are lower-case letters (with an inner apostrophe) or one of
. , ; : ( ) ? !; the vocabulary counts the training text only. The modules
are a fixed list found by name with importlib, so the corpus is the same
on every machine with the same Python version (others give their own
revision of the same modules). Only the standard library is needed; the
script prints the sizes and the SHA-256 of the three files.
"""
from __future__ import annotations

import argparse
import ast
import collections
import hashlib
import importlib.util
import re
from pathlib import Path

# Pure-Python modules with plenty of docstrings, in every Python 3 since 3.8.
MODULES = (
    "argparse", "asyncio.base_events", "asyncio.events", "asyncio.streams", "calendar",
    "cmd", "codecs", "collections", "concurrent.futures._base", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "dis", "doctest", "email.message", "email.utils", "enum", "fileinput", "fnmatch",
    "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "heapq",
    "hmac", "http.client", "http.cookiejar", "http.server", "imaplib", "inspect",
    "ipaddress", "json", "locale", "logging", "logging.handlers", "mailbox",
    "mimetypes", "multiprocessing.pool", "netrc", "ntpath", "numbers", "optparse",
    "os", "pathlib", "pdb", "pickle", "pkgutil", "platform", "plistlib", "poplib",
    "posixpath", "pprint", "pydoc", "queue", "quopri", "random", "re", "sched",
    "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket",
    "socketserver", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "turtle",
    "typing", "unittest.case", "unittest.mock", "urllib.parse", "urllib.request",
    "uuid", "warnings", "wave", "weakref", "webbrowser", "xml.dom.minidom", "zipfile",
)

TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[.,;:()?!]")
EOS, UNK = "</s>", "<unk>"


def docstrings(name: str) -> list[str]:
    """Every docstring of module `name` (module, classes, functions), in source order."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                out.append(doc)
    return out


def words(doc: str) -> list[str]:
    return TOKEN.findall(doc.lower())


def build(vocab_size: int) -> tuple[list[list[str]], list[list[str]], list[tuple[str, int]]]:
    docs = [w for name in MODULES for d in docstrings(name) if len(w := words(d)) >= 3]
    train = [d for k, d in enumerate(docs) if k % 10 != 9]
    valid = [d for k, d in enumerate(docs) if k % 10 == 9]
    counts = collections.Counter(w for d in train for w in d + [EOS])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size - 1]
    known = {w for w, _ in ranked}
    unk = sum(c for w, c in counts.items() if w not in known)
    vocab = ranked + [(UNK, unk)]
    return train, valid, vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--vocab", type=int, default=2000)
    args = ap.parse_args()
    train, valid, vocab = build(args.vocab)
    if len(vocab) < args.vocab:
        raise SystemExit(f"data.py: only {len(vocab)} distinct words, fewer than --vocab "
                         f"{args.vocab}")
    args.out.mkdir(parents=True, exist_ok=True)
    files = {
        "train.txt": "".join(" ".join(d + [EOS]) + "\n" for d in train),
        "valid.txt": "".join(" ".join(d + [EOS]) + "\n" for d in valid),
        "vocab.txt": "".join(f"{w} {c}\n" for w, c in vocab),
    }
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        print(f"{args.out / name}: {len(text.splitlines())} lines, sha256 {digest}")
    ntrain = sum(len(d) + 1 for d in train)
    covered = sum(c for w, c in vocab[:-1])
    print(f"{len(train)} training docstrings ({ntrain} words), {len(valid)} validation; "
          f"the vocabulary covers {covered / ntrain:.1%} of the training words")


if __name__ == "__main__":
    main()
