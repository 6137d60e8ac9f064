"""User code: modules that register a user's own layers, updaters,
learning-rate generators, init methods and algorithms.

`load(["mypkg.layers", "path/to/mylayers.py"])` imports each one (a dotted
module name, or a `.py` file), so that the classes it defines register
themselves under their `user_type` names. The CLI's `--module` option and the
runtime process both call it, so a job's processes know the same classes.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from runtime.errors import UserError


def load(modules: list[str] | tuple[str, ...]) -> None:
    for name in modules:
        try:
            if name.endswith(".py"):
                path = Path(name).resolve()
                if not path.is_file():
                    raise UserError(f"--module {name}: no such file")
                mod_name = f"singa_user_{path.stem}"
                if mod_name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except UserError:
            raise
        except ModuleNotFoundError as e:
            raise UserError(f"--module {name}: {e}") from None
        except Exception as e:  # the user's code failed while importing
            where = traceback.extract_tb(e.__traceback__)[-1]
            raise UserError(f"--module {name}: importing it raised {type(e).__name__}: {e} "
                            f"({where.filename}:{where.lineno})") from None
