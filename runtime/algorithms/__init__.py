"""TrainOneBatch algorithms (Worker subclasses), registered by AlgType.
Importing this package registers every built-in algorithm."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
