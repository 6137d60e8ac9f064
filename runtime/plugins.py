"""User code: modules that register a user's own layers, updaters,
learning-rate generators, init methods and algorithms, and `.proto` files
that extend the job schema with their own config messages.

`load(["my.proto", "mypkg.layers", "path/to/mylayers.py"])` imports each
one (a dotted module name, a `.py` file, or a `.proto` file, compiled on the
way: see `runtime.config.extensions`), so that the classes it defines
register themselves under their `user_type` names and the `[ext] { }`
blocks of its protos parse. Protos (and generated `*_pb2.py` modules) load
first, whatever their place in the list, since the user's modules import
them. The CLI's `--module` / `--proto` options and the runtime process both
call it, so a job's processes know the same classes.

`expand(modules)` is what ships: the list with each `.proto` replaced by its
generated `<stem>_pb2.py`, so a job's processes need no protoc.

The one registration call of each extension point (all decorators, all
taking the name that job.conf's `user_type` / `user_alg` gives):

| what                      | call                                   | must define            |
|---------------------------|----------------------------------------|------------------------|
| Layer                     | `@register_layer("Name")`              | compute_feature, compute_gradient (setup: default one source, same shape) |
| Updater                   | `@register_updater("Name")`            | rule (an `Updater` subclass), or apply, update, state, load_state |
| learning-rate generator   | `@register_lr("Name")`                 | get(step)              |
| param init method         | `@register_init("Name")`               | a function (proto, shape, rng) -> array |
| TrainOneBatch (Worker)    | `@register_alg("Name")`                | train_one_batch, test_one_batch |

They are importable from here (`from runtime.plugins import register_layer`)
or from the module of each base class (`layer_registry.register`,
`runtime.model.updater.register_updater`, ...): the same registries. A name
registered twice, or a class that lacks a method it must define, is a
`UserError` at once, naming the methods.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from runtime.errors import UserError

T = TypeVar("T")


def with_protos(protos: Sequence[str], modules: Sequence[str]) -> tuple[str, ...]:
    """The `--proto` files then the modules, as one list for `load` (a
    user's modules may use the messages of their protos); a UserError if
    a `--proto` is not a .proto file."""
    for p in protos:
        if not p.endswith(".proto"):
            raise UserError(f"--proto {p}: expected a .proto file (a module goes to --module)")
    return tuple(protos) + tuple(modules)


def expand(modules: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`modules` with protos first and each `.proto` compiled: its entry
    becomes the path of the generated `<stem>_pb2.py` (what ships with a job)."""
    from runtime.config import extensions

    protos = [m for m in modules if extensions.is_proto_module(m)]
    rest = [m for m in modules if not extensions.is_proto_module(m)]
    out = [str(extensions.compile_proto(m)) if m.endswith(".proto") else m for m in protos]
    return tuple(out + rest)


def load(modules: list[str] | tuple[str, ...]) -> None:
    """Import every module of `modules` (see the module doc); a UserError names the one that failed."""
    from runtime.config import extensions

    protos = [m for m in modules if extensions.is_proto_module(m)]
    for name in protos + [m for m in modules if not extensions.is_proto_module(m)]:
        try:
            if name.endswith(".proto"):
                extensions.load_proto(name)
            elif name.endswith("_pb2.py"):
                if not Path(name).is_file():
                    raise UserError(f"--module {name}: no such file")
                extensions.load_generated(name, shown=f"--module {name}")
            elif name.endswith(".py"):
                _load_file(name)
            else:
                importlib.import_module(name)
        except UserError:
            raise
        except ModuleNotFoundError as e:
            raise UserError(f"--module {name}: {e}") from None
        except Exception as e:  # noqa: BLE001 - the user's code failed while importing; reported as a UserError
            where = traceback.extract_tb(e.__traceback__)[-1]
            raise UserError(f"--module {name}: importing it raised {type(e).__name__}: {e} "
                            f"({where.filename}:{where.lineno})") from None


def _load_file(name: str) -> None:
    path = Path(name).resolve()
    if not path.is_file():
        raise UserError(f"--module {name}: no such file")
    mod_name = f"singa_user_{path.stem}"
    if mod_name in sys.modules:
        return
    # imported already under another name (`import lion`, or the running
    # __main__): a second copy would register its classes a second time
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if f and f.endswith(path.name) and Path(f).resolve() == path:
            return
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None  # a path always gets the source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        # a half-imported module must not count as loaded next time
        sys.modules.pop(mod_name, None)
        raise


# ------------------------------------------------------ registration calls --
def register_layer(name: str) -> Callable[[T], T]:
    """Decorator: register a user Layer class under `name` (job.conf: `user_type: "name"`)."""
    from runtime.neuralnet.layer import layer_registry

    _check_name(name, "register_layer")
    return layer_registry.register(name)


def register_alg(name: str) -> Callable[[T], T]:
    """Decorator: register a user Worker subclass (a TrainOneBatch algorithm)
    under `name` (job.conf: `train_one_batch { user_alg: "name" }`)."""
    from runtime.train.worker import alg_registry

    _check_name(name, "register_alg")
    return alg_registry.register(name)


def _check_name(name: Any, call: str) -> None:
    if not isinstance(name, str) or not name:
        raise UserError(f"{call} needs a non-empty name string (the job.conf's user_type), "
                        f"got {name!r}; write @{call}(\"MyName\")")


def __getattr__(attr: str) -> Any:
    # the other three live beside their base classes; imported on first use so
    # that `runtime.plugins` stays cheap for the CLI
    homes = {"register_updater": "runtime.model.updater", "register_lr": "runtime.model.lr",
             "register_init": "runtime.model.param_init"}
    if attr in homes:
        return getattr(importlib.import_module(homes[attr]), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
