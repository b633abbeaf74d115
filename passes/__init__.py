"""Built-in passes, one module per family; importing this package registers them all.

Every public module in this folder is imported (in name order), so a new pass module only has
to exist here to be registered.
"""
import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_module}")
