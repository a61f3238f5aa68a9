"""`load_app`: finding `module:attribute`, telling WSGI from ASGI, and the errors a user sees."""

from __future__ import annotations

import functools
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from handlers.loading import AppNotFound, LoadError, asyncio_only, is_asgi, load_app, use_active_venv

MODULE = """
import functools

def wsgi(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]

async def asgi(scope, receive, send):
    pass

class AsgiClass:
    async def __call__(self, scope, receive, send):
        pass

class WsgiClass:
    def __call__(self, environ, start_response):
        return []

asgi_instance = AsgiClass()
wsgi_instance = WsgiClass()
asgi_partial = functools.partial(asgi)
asgi_instance_partial = functools.partial(asgi_instance)
wsgi_partial = functools.partial(wsgi)

class Holder:
    app = wsgi

holder = Holder()
number = 3
calls = []

def factory():
    calls.append(1)
    return wsgi

def failing_factory():
    raise ValueError("factory bug")
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory holding a uniquely named module (MODULE); sys.path and sys.modules restored."""
    name = f"userapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    saved = list(sys.path)
    try:
        yield tmp_path, name
    finally:
        sys.path[:] = saved
        for key in [key for key in sys.modules if key.startswith("userapp_") or key.startswith("userpkg_")]:
            del sys.modules[key]


@pytest.mark.parametrize(
    ("attribute", "interface"),
    [
        ("wsgi", "wsgi"),
        ("asgi", "asgi"),
        ("asgi_instance", "asgi"),
        ("wsgi_instance", "wsgi"),
        ("asgi_partial", "asgi"),
        ("asgi_instance_partial", "asgi"),
        ("wsgi_partial", "wsgi"),
        ("WsgiClass", "wsgi"),
        ("holder.app", "wsgi"),
    ],
)
def test_auto_tells_asgi_from_wsgi(app_dir: tuple[Path, str], attribute: str, interface: str) -> None:
    directory, name = app_dir
    found, app = load_app(f"{name}:{attribute}", app_dir=str(directory))
    assert found == interface
    assert callable(app)


def test_app_dir_goes_first_on_sys_path(app_dir: tuple[Path, str]) -> None:
    directory, name = app_dir
    load_app(f"{name}:wsgi", app_dir=str(directory))
    assert sys.path[0] == str(directory)
    assert sys.path.count(str(directory)) == 1


def test_default_app_dir_is_the_current_directory(
    app_dir: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, name = app_dir
    monkeypatch.chdir(directory)
    assert load_app(f"{name}:wsgi")[0] == "wsgi"


def test_factory_is_called_once(app_dir: tuple[Path, str]) -> None:
    directory, name = app_dir
    interface, app = load_app(f"{name}:factory", app_dir=str(directory), factory=True)
    assert interface == "wsgi"
    assert app is sys.modules[name].wsgi
    assert sys.modules[name].calls == [1]


def test_interface_given_wins(app_dir: tuple[Path, str]) -> None:
    directory, name = app_dir
    assert load_app(f"{name}:wsgi", app_dir=str(directory), interface="asgi")[0] == "asgi"
    assert load_app(f"{name}:asgi", app_dir=str(directory), interface="wsgi")[0] == "wsgi"
    with pytest.raises(LoadError):
        load_app(f"{name}:wsgi", app_dir=str(directory), interface="cgi")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("{name}", ["module:attribute"]),
        (":app", ["module:attribute"]),
        ("{name}:", ["module:attribute"]),
        ("my-app:app", ["not a module name"]),
        ("{name}:app()", ["not an attribute name"]),
        ("nosuchmodule_x:app", ["no module named 'nosuchmodule_x'", "{dir}"]),
        ("nosuchpkg_x.sub:app", ["no module named 'nosuchpkg_x.sub'", "(no 'nosuchpkg_x')"]),
        ("{name}:missing", ["has no attribute 'missing'", "{name}.py"]),
        ("{name}:holder.missing", ["has no attribute 'holder.missing'"]),
        ("{name}:number", ["int 3", "not a WSGI or ASGI app", "--factory"]),
    ],
)
def test_not_found_is_one_clear_line(app_dir: tuple[Path, str], spec: str, words: list[str]) -> None:
    directory, name = app_dir
    with pytest.raises(AppNotFound) as caught:
        load_app(spec.format(name=name), app_dir=str(directory))
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word.format(name=name, dir=directory) in message


def test_factory_that_is_not_callable(app_dir: tuple[Path, str]) -> None:
    directory, name = app_dir
    with pytest.raises(AppNotFound, match="--factory cannot call it"):
        load_app(f"{name}:number", app_dir=str(directory), factory=True)


def test_missing_app_dir(tmp_path: Path) -> None:
    with pytest.raises(AppNotFound, match="not a directory"):
        load_app("main:app", app_dir=str(tmp_path / "nowhere"))


def test_user_errors_propagate_unchanged(app_dir: tuple[Path, str]) -> None:
    """The user's bug shows as the user's exception (the CLI prints its traceback)."""
    directory, name = app_dir
    (directory / f"{name}_broken.py").write_text("import nosuchdependency_x\n")
    (directory / f"{name}_raises.py").write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(ModuleNotFoundError, match="nosuchdependency_x"):
        load_app(f"{name}_broken:app", app_dir=str(directory))
    with pytest.raises(RuntimeError, match="boom at import"):
        load_app(f"{name}_raises:app", app_dir=str(directory))
    with pytest.raises(ValueError, match="factory bug"):
        load_app(f"{name}:failing_factory", app_dir=str(directory), factory=True)


def test_dotted_module_in_a_package(app_dir: tuple[Path, str]) -> None:
    directory, name = app_dir
    package = directory / f"userpkg_{name[-8:]}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "wsgi.py").write_text("def application(environ, start_response):\n    return []\n")
    assert load_app(f"{package.name}.wsgi:application", app_dir=str(directory))[0] == "wsgi"


def test_a_module_named_like_the_servers_own_package(tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text("def app(environ, start_response):\n    return []\n")
    saved = list(sys.path)
    try:
        with pytest.raises(AppNotFound, match="taken by the server's own package"):
            load_app("handlers:app", app_dir=str(tmp_path))
    finally:
        sys.path[:] = saved


@pytest.mark.parametrize(
    "statement", ["from handlers import hello", "import handlers.users", "from protocol.models import User"]
)
def test_an_app_importing_its_own_package_named_like_ours_says_so(tmp_path: Path, statement: str) -> None:
    """A web app's own `handlers` (or `protocol`) package is shadowed by the server's, imported
    first: the user's traceback gets a note saying why, not only a puzzling ImportError."""
    for package in ("handlers", "protocol"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("def hello():\n    return b'hi'\n")
    module = f"user_main_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(f"{statement}\napp = None\n")
    saved = list(sys.path)
    try:
        with pytest.raises(ImportError) as caught:
            load_app(f"{module}:app", app_dir=str(tmp_path))
    finally:
        sys.path[:] = saved
    notes = getattr(caught.value, "__notes__", [])
    assert len(notes) == 1 and "has the name of the server's own package" in notes[0], notes
    assert str(tmp_path) in notes[0] and "rename" in notes[0]


def test_is_asgi_on_builtins() -> None:
    assert not is_asgi(print)
    assert not is_asgi(object())


def test_active_venv_site_packages_appended(tmp_path: Path) -> None:
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = tmp_path / "venv" / "lib" / version / "site-packages"
    site.mkdir(parents=True)
    (site / "extra.pth").write_text(str(tmp_path / "editable") + "\n")
    (tmp_path / "editable").mkdir()
    saved = list(sys.path)
    try:
        assert use_active_venv({"VIRTUAL_ENV": str(tmp_path / "venv")}) is None
        assert sys.path[: len(saved)] == saved  # appended: the server's packages come first
        assert str(site) in sys.path
        assert str(tmp_path / "editable") in sys.path  # .pth files processed
    finally:
        sys.path[:] = saved


def test_active_venv_of_another_python_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "venv" / "lib" / "python2.7" / "site-packages").mkdir(parents=True)
    saved = list(sys.path)
    warning = use_active_venv({"VIRTUAL_ENV": str(tmp_path / "venv")})
    assert warning is not None and "pip install" in warning
    assert sys.path == saved
    assert use_active_venv({"VIRTUAL_ENV": sys.prefix}) is None
    assert use_active_venv({}) is None


def test_asyncio_only_names_the_frameworks_that_cannot_run_on_trio() -> None:
    from django.core.handlers.asgi import ASGIHandler
    from starlette.applications import Starlette

    assert asyncio_only(ASGIHandler) == "Django's ASGI handler"
    assert asyncio_only(functools.partial(object.__new__(ASGIHandler))) == "Django's ASGI handler"
    assert asyncio_only(Starlette()) is None

    async def raw(scope: object, receive: object, send: object) -> None:
        pass

    assert asyncio_only(raw) is None
