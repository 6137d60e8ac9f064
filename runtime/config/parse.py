"""Parse job.conf text into a `JobProto` (protobuf text format, as SINGA).

SINGA's text conventions all parse, because this is protobuf's own text
parser: `#` comments, `field {` and `field: {`, `field < >`, trailing `;` or
`,`, repeated fields written several times or as `[a, b]`, and `[ext] { }`
extension fields of a user's `.proto` (runtime.config.extensions). The parser
skips an extension that no loaded module defines, so that every problem of
the file is found in one pass; `unknown_extensions` then reports each one
where it is written (`load_job` makes them errors).

A syntax error raises `ConfigError` with one problem located at
`PATH:LINE:COL` (lines and columns from 1), whose message says what was
found, what was expected and, for a misspelt field or enum name, the closest
valid names (including the names SINGA's docs use but its code does not).
"""
from __future__ import annotations

import re

from google.protobuf import descriptor_pool, text_format
from google.protobuf.descriptor import Descriptor

from conf import job_pb2
from runtime.config.locate import Locator
from runtime.errors import ConfigError, Problem
from runtime.registry import did_you_mean, nearest

# Names SINGA's docs (or older versions) use that v0.3's job.proto does not.
_DOC_NAMES = {
    "kConst": "kConstant",
    "AVE": "AVG",
    "freq": "change_freq",
    "checkpoint_frequency": "checkpoint_freq",
    "checkpoint": "checkpoint_path",
    "kCSVRecord": "kCSVInput",
    "kMnistImage": "kMnist",
    "mnistimage_conf": "mnist_conf",
    "kBackPropagation": "kBP",
    "kContrastiveDivergence": "kCD",
    "nworkers_per_process": "nworkers_per_procs",
    "nservers_per_process": "nservers_per_procs",
    "pcd_k": "cd_k",
    "display_frequency": "disp_freq",
}
_REMOVED = {
    "kPrefetch": "kPrefetch was removed in SINGA v0.3: use a kRecordInput layer with "
                 "store_conf { prefetching: true }",
    "prefetch_conf": "prefetch_conf was removed in SINGA v0.3: use a kRecordInput layer with "
                     "store_conf { prefetching: true }",
    "location": "the layer field 'location' exists only in SINGA's docs; placement follows "
                "partition_dim and the cluster block",
}

_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]+)"')
_NO_ENUM = re.compile(r'Enum type "([\w.]+)" has no value named (\w+)')
_EXT_PATH = re.compile(r"(?:^|\.)\[([\w./]+)\]$")
_WRONG_EXT = re.compile(r'Extension "([\w.]+)" does not extend message type "([\w.]+)"')


def parse_text(text: str, path: str = "<text>") -> tuple[job_pb2.JobProto, Locator]:
    """Parse job.conf text; return the JobProto and its field-position index.

    Raises `ConfigError` (one problem, `PATH:LINE:COL: message`) on a syntax
    error. Missing required fields are not checked here (see validate).
    """
    proto = job_pb2.JobProto()
    try:
        text_format.Parse(text, proto, allow_unknown_extension=True)
    except text_format.ParseError as e:
        raise ConfigError([_syntax_problem(e, text, path)]) from None
    return proto, Locator(text, proto.DESCRIPTOR, path)


def unknown_extensions(locator: Locator, severity: str = "warning") -> list[Problem]:
    """A problem for each `[name] { }` extension field of the text that no
    loaded module defines (the parser skipped it), at its LINE:COL, with
    `severity` ("error" in `load_job`).

    The message names the message it would extend, suggests a loaded
    extension of that message with a close name (`[data_conf]` for
    `[rnnlm.data_conf]`) and says how to load the `.proto` that defines it.
    """
    pool = descriptor_pool.Default()
    out = []
    for fpath, (line, col) in sorted(locator.positions.items(), key=lambda kv: kv[1]):
        m = _EXT_PATH.search(fpath)
        if not m:
            continue
        name = m.group(1)
        try:
            pool.FindExtensionByName(name)
            continue
        except KeyError:
            pass
        container = _container(fpath[:m.start()].lstrip("."))
        out.append(Problem(f"{locator.path}:{line}:{col}",
                           _unknown_extension_message(name, container), severity))
    return out


def _container(prefix: str) -> Descriptor | None:
    """The message type at a field path such as `neuralnet.layer[2]` ('' is the JobProto)."""
    desc = job_pb2.JobProto.DESCRIPTOR
    pool = descriptor_pool.Default()
    for part in re.findall(r"\[[^\]]*\]|[^.\[\]]+", re.sub(r"\[\d+\]", "", prefix)):
        try:
            if part.startswith("["):
                field = pool.FindExtensionByName(part[1:-1])
            else:
                field = desc.fields_by_name[part]
        except KeyError:
            return None
        desc = field.message_type
        if desc is None:
            return None
    return desc


def _unknown_extension_message(name: str, container: Descriptor | None) -> str:
    loaded = ([f.full_name for f in descriptor_pool.Default().FindAllExtensions(container)]
              if container is not None else [])
    where = container.full_name if container is not None else "this message"
    msg = f"extension [{name}] is not defined: no loaded .proto extends {where} with it"
    short = name.rpartition(".")[2]
    same = [f for f in loaded if f.rpartition(".")[2] == short]
    close = same or nearest(name, loaded, cutoff=0.6)
    if close:
        return msg + "; did you mean " + " or ".join(f"[{c}]" for c in close) + "?"
    msg += ("; give the .proto that defines it to singa (validate/submit --proto FILE.proto, "
            "or --module FILE.proto)")
    if loaded:
        msg += "; extensions of " + where + " loaded: " + ", ".join(f"[{f}]" for f in loaded)
    return msg


def _syntax_problem(e: text_format.ParseError, text: str, path: str) -> Problem:
    line, col = e.GetLine(), e.GetColumn()
    msg = str(e)
    # str(e) is "L:C : message", and the tokenizer prefixes "'<the line>': "
    head = f"{line}:{col} : "
    if line is not None and msg.startswith(head):
        msg = msg[len(head):]
    lines = text.split("\n")
    if line is not None and 0 < line <= len(lines):
        quoted = f"'{lines[line - 1]}': "
        if msg.startswith(quoted):
            msg = msg[len(quoted):]
        elif msg.startswith("'': "):  # the tokenizer ran past the last line
            msg = msg[4:]
    msg = msg.rstrip(".")
    if msg.endswith("found: ''"):
        msg = "unexpected end of file: " + msg[0].lower() + msg[1:-len(" but found: ''")]
    if line is not None and msg.startswith("Expected") and _at_end(lines, line, col):
        msg = "unexpected end of file: " + msg[0].lower() + msg[1:]
    msg += _hint(msg)
    where = f"{path}:{line}:{col}" if line is not None else path
    if line is None and text.count("\n") == 0:
        where = f"{path}:1:1"
    return Problem(where, msg)


def _at_end(lines: list[str], line: int, col: int) -> bool:
    """Whether only blanks and comments follow the token at LINE:COL (the
    parser reports a premature end of file at the last token)."""
    rest = []
    if 0 < line <= len(lines):
        tail = lines[line - 1][col - 1:]
        m = text_format.Tokenizer._TOKEN.match(tail)  # the parser's own token rule
        rest.append(tail[m.end() if m else 1:])
    rest += lines[line:]
    return all(not lyr.strip() or lyr.strip().startswith("#") for lyr in rest)


def _hint(msg: str) -> str:
    pool = descriptor_pool.Default()
    m = _WRONG_EXT.search(msg)
    if m:
        try:
            owner = pool.FindExtensionByName(m.group(1)).containing_type.full_name
        except KeyError:
            return ""
        return f"; [{m.group(1)}] extends {owner}: write it inside a block of that type"
    m = _NO_FIELD.search(msg)
    if m:
        type_name, name = m.groups()
        if name in _REMOVED:
            return f"; {_REMOVED[name]}"
        try:
            desc = pool.FindMessageTypeByName(type_name)
        except KeyError:
            return ""
        names = [f.name for f in desc.fields]
        if name in _DOC_NAMES and _DOC_NAMES[name] in names:
            return f"; did you mean '{_DOC_NAMES[name]}'? ('{name}' is a name from SINGA's docs)"
        hint = did_you_mean(name, names)
        if hint:
            return hint
        return "; fields of " + desc.name + ": " + ", ".join(sorted(names))
    m = _NO_ENUM.search(msg)
    if m:
        type_name, name = m.groups()
        if name in _REMOVED:
            return f"; {_REMOVED[name]}"
        try:
            desc = pool.FindEnumTypeByName(type_name)
        except KeyError:
            return ""
        names = [v.name for v in desc.values]
        if name in _DOC_NAMES and _DOC_NAMES[name] in names:
            return f"; did you mean {_DOC_NAMES[name]}? ({name} is a name from SINGA's docs)"
        hint = did_you_mean(name, names, quote="")
        # SINGA's own examples name C++ user layers kData, kLoss...: say where those come from
        user = (f'; a layer of your own is written user_type: "{name}" and comes from '
                f'--module FILE.py (registered with @register_layer("{name}"))'
                if desc.full_name == "singa.LayerType" else "")
        if hint:
            return hint + user
        return "; valid values: " + ", ".join(names) + user
    return ""
