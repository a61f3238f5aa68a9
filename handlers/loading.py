"""Finding a user's app from `module:attribute`, and telling WSGI from ASGI.

    interface, app = load_app("myproject.wsgi:application")          # ("wsgi", <WSGIHandler>)
    interface, app = load_app("main:create_app", factory=True)        # calls create_app()
    interface, app = load_app("main:app", app_dir="/srv/site", interface="asgi")

The rules, as gunicorn, uvicorn and hypercorn have them:

- `APP` is `module:attribute`; the module may be dotted (`pkg.sub`), and so may the
  attribute (`app.wsgi_app`: an attribute of an attribute).
- `app_dir` goes first on `sys.path` before the import (default: the current directory,
  the one the command was started from).
- `factory`: the attribute is called with no arguments and its result is the app.
- `interface`: "wsgi", "asgi" or "auto". Auto says ASGI for a coroutine function, or for an
  object whose `__call__` is one (Starlette, FastAPI, Django's ASGIHandler), seen through
  `functools.partial`; everything else callable is WSGI (Flask, Django's WSGIHandler).
  An app whose coroutine is hidden (a plain function returning one) needs `interface="asgi"`.

What went wrong is told apart, because the user fixes each differently:

- `AppNotFound` (a `LoadError`): the module or attribute is not there, or what is there
  is not an app. Its message is one line naming what was looked for and where.
- Any other exception: raised by the user's own code while it was imported or while the
  factory ran; it propagates unchanged, so its traceback shows the user's bug.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Any, Final, Literal

Interface = Literal["wsgi", "asgi"]
INTERFACES: Final = ("auto", "asgi", "wsgi")


class LoadError(Exception):
    """The app could not be loaded for a reason the user fixes on the command line."""


class AppNotFound(LoadError):
    """No module, no attribute, or not an app: the message is one line saying which."""


def load_app(
    spec: str, *, app_dir: str | None = None, factory: bool = False, interface: str = "auto"
) -> tuple[Interface, Any]:
    """Import `spec` ("module:attribute") and return ("wsgi" | "asgi", the app).

    Raises `AppNotFound` (one line) when the spec is malformed, the module or attribute
    is missing, or the result is not callable; anything the user's code raises while it
    is imported or while the factory runs propagates as it is.
    """
    if interface not in INTERFACES:
        raise LoadError(f"--interface must be one of {', '.join(INTERFACES)}, not {interface!r}")
    module_name, attribute = _split(spec)
    directory = os.path.abspath(app_dir if app_dir is not None else os.getcwd())
    if not os.path.isdir(directory):
        raise AppNotFound(f"--app-dir {directory!r} is not a directory")
    _put_first_on_path(directory)
    module = _import(module_name, directory)
    app: Any = module
    for index, part in enumerate(attribute.split(".")):
        try:
            app = getattr(app, part)
        except AttributeError:
            looked_for = ".".join(attribute.split(".")[: index + 1])
            raise AppNotFound(
                f"module {module_name!r} ({_where(module)}) has no attribute {looked_for!r}"
            ) from None
    if factory:
        if not callable(app):
            raise AppNotFound(f"{spec!r} is not callable, so --factory cannot call it (it is {_kind(app)})")
        app = app()  # the user's code: whatever it raises propagates
    if not callable(app):
        hint = "" if factory else "; if it builds the app when called, use --factory"
        raise AppNotFound(f"{spec!r} is {_kind(app)}, not a WSGI or ASGI app (not callable){hint}")
    if interface == "auto":
        return ("asgi" if is_asgi(app) else "wsgi"), app
    return ("asgi" if interface == "asgi" else "wsgi"), app


def is_asgi(app: object) -> bool:
    """Whether `app` looks like an ASGI 3 app: a coroutine function, or an object whose
    `__call__` is one, seen through `functools.partial`."""
    import inspect

    while isinstance(app, functools.partial):
        app = app.func
    if _is_coroutine_function(app):
        return True
    if inspect.isfunction(app) or inspect.ismethod(app) or inspect.isclass(app):
        return False  # a plain function or method; a class is called to make its result
    # Calling an object runs its type's __call__ (an instance attribute is not looked at).
    return _is_coroutine_function(getattr(type(app), _CALL, None))


_ASYNCIO_ONLY: Final = {"django": "Django's ASGI handler", "channels": "Django Channels", "quart": "Quart"}
"""Frameworks whose ASGI apps run on asyncio only, by top-level package."""


def asyncio_only(app: object) -> str | None:
    """The name of the asyncio-only framework `app` (an ASGI app) belongs to, or None: such
    an app cannot run on trio (Django's handler awaits asyncio futures)."""
    while isinstance(app, functools.partial):
        app = app.func
    for candidate in (app, type(app)):
        package = str(getattr(candidate, "__module__", None) or "").partition(".")[0]
        if package in _ASYNCIO_ONLY:
            return _ASYNCIO_ONLY[package]
    return None


_CALL: Final = "__call__"


def _is_coroutine_function(obj: object) -> bool:
    import inspect

    if obj is None:
        return False
    if inspect.iscoroutinefunction(obj):
        return True
    marker = getattr(obj, "_is_coroutine", None)  # asgiref's markcoroutinefunction, Python < 3.12
    if marker is None:
        return False
    import asyncio.coroutines  # only then: asyncio costs start-up time

    return marker is getattr(asyncio.coroutines, "_is_coroutine", object())


def _split(spec: str) -> tuple[str, str]:
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise AppNotFound(f"APP must be 'module:attribute' (e.g. 'main:app'), not {spec!r}")
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise AppNotFound(f"{module_name!r} in {spec!r} is not a module name (e.g. 'main' or 'pkg.main')")
    if not all(part.isidentifier() for part in attribute.split(".")):
        raise AppNotFound(f"{attribute!r} in {spec!r} is not an attribute name (e.g. 'app', 'app.wsgi_app')")
    return module_name, attribute


def _put_first_on_path(directory: str) -> None:
    path = sys.path
    # '' and '.' stand for the current directory: an equal entry further down is moved up.
    for index in range(len(path) - 1, -1, -1):
        if os.path.abspath(path[index] or ".") == directory:
            del path[index]
    path.insert(0, directory)


_OWN_PACKAGES: Final = ("protocol", "handlers", "transports")
"""The server's own top-level packages: a user module of the same name cannot be imported."""


def _import(module_name: str, directory: str) -> Any:
    top = module_name.partition(".")[0]
    own = sys.modules.get(top)
    if top in _OWN_PACKAGES and own is not None:
        theirs = os.path.join(directory, top)
        ours = os.path.dirname(os.path.abspath(getattr(own, "__file__", None) or "."))
        if os.path.abspath(theirs) != ours and (os.path.isdir(theirs) or os.path.isfile(theirs + ".py")):
            raise AppNotFound(
                f"the module name {top!r} is taken by the server's own package ({ours}); rename {theirs}"
            )
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        # Missing only if what is missing is the module asked for, or a package on its way;
        # a module that the user's module imports and does not find is the user's bug.
        missing = exc.name or ""
        if isinstance(exc, ModuleNotFoundError) and (
            missing == module_name or module_name.startswith(missing + ".")
        ):
            raise AppNotFound(
                f"no module named {module_name!r} in {directory} (--app-dir) or elsewhere on sys.path"
                + (f" (no {missing!r})" if missing != module_name else "")
            ) from None
        clash = _shadowed(exc, directory)
        if clash is not None:
            exc.add_note(clash)  # printed under the user's traceback
        raise


def _shadowed(exc: ImportError, directory: str) -> str | None:
    """Why `exc` happened, if the app's own package of the same name as one of the server's
    (a web app's `handlers`, say) lost to the server's, imported first; else None."""
    wanted = (exc.name or "").partition(".")[0]
    for top in _OWN_PACKAGES:
        own = sys.modules.get(top)
        theirs = os.path.abspath(os.path.join(directory, top))
        if own is None or not (os.path.isdir(theirs) or os.path.isfile(theirs + ".py")):
            continue
        ours = os.path.dirname(os.path.abspath(getattr(own, "__file__", None) or "."))
        if theirs != ours and (wanted == top or (exc.path or "").startswith(ours + os.sep)):
            return (
                f"{theirs} has the name of the server's own package {top!r} ({ours}), which "
                "Python imported first: rename yours (the server's are protocol, handlers, transports)"
            )
    return None


def _where(module: Any) -> str:
    path = getattr(module, "__file__", None)
    return str(path) if path else "a namespace package"


def _kind(value: object) -> str:
    if isinstance(value, type(sys)):
        return f"the module {value.__name__!r}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def use_active_venv(environ: dict[str, str] | None = None) -> str | None:
    """Make the packages of the active virtual environment (`VIRTUAL_ENV`) importable.

    When this Python is that environment's own, there is nothing to do. Otherwise (the
    server runs on its own environment, as `./your_program.sh` does) the environment's
    site-packages is appended to `sys.path`, after the server's own packages, with its
    `.pth` files processed (editable installs); nothing is installed or changed in it.
    Returns a warning to show when that cannot be done (it was made for another Python
    version), else None.
    """
    venv = (os.environ if environ is None else environ).get("VIRTUAL_ENV")
    if not venv or not os.path.isdir(venv):
        return None
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        return None
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site_packages = os.path.join(venv, "lib", version, "site-packages")
    if not os.path.isdir(site_packages):
        return (
            f"the active virtual environment {venv} has no site-packages for {version}, so its "
            f"packages cannot be used from this server's Python ({sys.executable}); install the "
            "server into it instead (pip install /path/to/checkout, then h11-server APP)"
        )
    import site

    if site_packages not in sys.path:
        site.addsitedir(site_packages)
    return None
