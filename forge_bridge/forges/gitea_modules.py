"""Loads only the parts of gitea-api-client the bridge calls, leaving the rest of the package unloaded until asked.

The generated package's `__init__` imports every API class and all 224 models: over 2 s and ~58 MB in each
process. The bridge calls three API classes. Their modules are imported here without running the package's
`__init__` (which still runs, in full, the first time anything asks the package for a name it lacks), and with
pydantic's `validate_call` set to build each operation's argument validator on its first call
(`defer_build`) instead of all of them, about 900, at import.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import threading
from types import ModuleType

PACKAGE = "gitea_api_client"
MODULES = ("api_client", "configuration", "exceptions", "api.issue_api", "api.repository_api", "api.user_api")
_loading = threading.RLock()   # re-entered: an import under load() may look a name up


def load() -> ModuleType:
    """The package, with the modules in MODULES imported."""
    with _loading:
        package = sys.modules.get(PACKAGE) or _shell(PACKAGE)
        if all(f"{PACKAGE}.{name}" in sys.modules for name in MODULES):
            return package
        models = _shell(f"{PACKAGE}.models")
        _shell(f"{PACKAGE}.api")
        import pydantic

        validate_call = pydantic.validate_call
        pydantic.validate_call = functools.partial(validate_call, config=pydantic.ConfigDict(defer_build=True))
        try:
            for name in MODULES:
                importlib.import_module(f"{PACKAGE}.{name}")
        finally:
            pydantic.validate_call = validate_call
        _name_loaded_models(models)
        return package


def _name_loaded_models(models: ModuleType) -> None:
    """The client finds a response's model by name on the models package (`getattr(models, "Issue")`): name
    those already loaded there, so only a model none of the three API classes uses runs the full `__init__`."""
    prefix = f"{models.__name__}."
    for name, module in list(sys.modules.items()):
        if name.startswith(prefix):
            for attribute, value in vars(module).items():
                if isinstance(value, type) and value.__module__ == name:
                    setattr(models, attribute, value)


def _shell(name: str) -> ModuleType:
    """The package `name` without its `__init__` run. Its submodules import as usual (`from package import
    submodule` too); the first lookup of any other name it lacks runs the `__init__` into it, so a full
    `import` of the package still gets everything."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)

    def lookup(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        if importlib.util.find_spec(f"{name}.{attribute}") is not None:
            return importlib.import_module(f"{name}.{attribute}")
        with _loading:   # two threads asking at once: the __init__ runs once
            if vars(module).get("__getattr__") is lookup:
                del module.__getattr__      # the __init__ defines every name itself
                spec.loader.exec_module(module)
        return getattr(module, attribute)

    module.__getattr__ = lookup
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module
