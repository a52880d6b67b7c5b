"""Loads only the operations of gitea-api-client the bridge calls, leaving the rest of the package unloaded until asked.

The generated package's `__init__` imports every API class and all 224 models (over 2 s and ~58 MB in each
process), and even the three API modules the bridge uses hold some 400 operations, each with its validator and
pydantic field objects, and import 184 models between them (~30 MB). Here each of those three classes is built
from its generated source with only the operations in OPERATIONS (the method, its `_serialize` helper and the
models they name), under a module of its own that is not registered as the package's: importing the package in
full afterwards still gets the whole generated classes. The package's `__init__` is not run until something
asks the package for a name it lacks. pydantic's `validate_call` is set to build an operation's argument
validator on its first call (`defer_build`).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import sys
import threading
from types import ModuleType

PACKAGE = "gitea_api_client"
MODULES = ("api_client", "configuration", "exceptions")
OPERATIONS = {
    "issue_api": ("IssueApi", (
        "issue_add_label", "issue_create_comment", "issue_create_label", "issue_edit_comment", "issue_get_comments",
        "issue_get_comments_and_timeline", "issue_get_issue", "issue_get_labels", "issue_get_repo_comments",
        "issue_list_issues", "issue_list_labels", "issue_post_comment_reaction", "issue_remove_label")),
    "repository_api": ("RepositoryApi", (
        "repo_create_hook", "repo_create_pull_request", "repo_create_pull_review_requests", "repo_delete_branch",
        "repo_edit_hook", "repo_edit_pull_request", "repo_get", "repo_get_pull_request",
        "repo_get_pull_review_comments", "repo_get_repo_permissions", "repo_list_hooks", "repo_list_pull_requests",
        "repo_list_pull_reviews", "repo_list_statuses")),
    "user_api": ("UserApi", ("user_get", "user_get_current")),
}
# A member of a generated API class at class level, with its decorators: `    @validate_call\n    async def name(`.
_MEMBER = re.compile(r"^    (?:@[^\n]*\n    )*(?:async )?def (\w+)\(", re.MULTILINE)
_MODEL_IMPORT = re.compile(rf"^from {PACKAGE}\.models\.\w+ import (\w+)\n", re.MULTILINE)
_loading = threading.RLock()   # re-entered: an import under load() may look a name up
_classes: dict[str, type] = {}


def load() -> dict[str, type]:
    """The API classes in OPERATIONS by name, each with just those operations."""
    with _loading:
        if _classes:
            return _classes
        _shell(PACKAGE)
        models = _shell(f"{PACKAGE}.models")
        _shell(f"{PACKAGE}.api")
        for name in MODULES:
            importlib.import_module(f"{PACKAGE}.{name}")
        import pydantic

        validate_call = pydantic.validate_call
        pydantic.validate_call = functools.partial(validate_call, config=pydantic.ConfigDict(defer_build=True))
        try:
            classes = {name: _api_class(module, name, operations)
                       for module, (name, operations) in OPERATIONS.items()}
        finally:
            pydantic.validate_call = validate_call
        _name_loaded_models(models)
        _classes.update(classes)
        return _classes


def _api_class(module: str, name: str, operations: tuple[str, ...]) -> type:
    """Class `name` of the generated module, compiled from its source with only `operations` and the model imports
    they name. Raises ImportError naming any operation the installed version lacks."""
    spec = importlib.util.find_spec(f"{PACKAGE}.api.{module}")
    source = spec.loader.get_source(spec.name)
    if source is None:   # installed without its sources (bytecode only): the whole module, as generated
        return getattr(importlib.import_module(spec.name), name)
    members = list(_MEMBER.finditer(source))
    ends = [member.start() for member in members[1:]] + [len(source)]
    wanted = {"__init__", *operations, *(f"_{operation}_serialize" for operation in operations)}
    kept = {member.group(1): source[member.start():end] for member, end in zip(members, ends)
            if member.group(1) in wanted}
    if missing := wanted - kept.keys():
        raise ImportError(f"{spec.name} has no {', '.join(sorted(missing))}: not the gitea-api-client expected")
    body = "".join(kept.values())
    named = set(re.findall(r"\w+", body))
    head = _MODEL_IMPORT.sub(lambda line: line[0] if line[1] in named else "", source[:members[0].start()])
    # Not registered as the package's module (see the docstring), but registered: pydantic resolves an
    # operation's annotations in its module's namespace when it builds the validator on first call.
    loaded = sys.modules[f"{__name__}.{module}"] = ModuleType(f"{__name__}.{module}")
    loaded.__file__ = spec.origin
    exec(compile(head + body, spec.origin, "exec"), vars(loaded))
    return getattr(loaded, name)


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
