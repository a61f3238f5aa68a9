"""`./your_program.sh APP` as a user runs it: where the app is imported from, which Python runs
it when a virtual environment is active, and what a user sees when the app cannot be loaded.

These start the program once per case on one transport (the choice of transport changes nothing
here); the apps print what they need to tell at import time, on stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .client import fetch, request
from .conftest import LISTENING, ROOT

PROGRAM = str(ROOT / "your_program.sh")
APP = """
import sys
print("IMPORTED", __name__, "PREFIX", sys.prefix, "EXE", sys.executable, file=sys.stderr, flush=True)
{extra}

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def environment(**changes: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def serve(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[str, str]:
    """Start `your_program.sh ARGS` in `cwd`, check that it serves, stop it (exit 0).
    Returns (the listening line, stderr)."""
    err_path = cwd / f"stderr-{time.monotonic_ns()}.txt"
    with open(err_path, "wb") as err:
        process = subprocess.Popen(
            [PROGRAM, *args, "--port", "0", "--transport", "threads"],
            cwd=cwd,
            env=env or environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()  # bounded: the process exits or prints
        match = LISTENING.fullmatch(line)
        assert match, (line, err_path.read_text())
        response = fetch(match[1], int(match[2]), request("GET", "/"))  # serving, signals handled
        assert (response.status, response.body) == (200, b"ok"), err_path.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout) == 0, err_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return line, err_path.read_text()


def fails(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [PROGRAM, *args, "--port", "0"],
        cwd=cwd,
        env=env or environment(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.stdout == "", result.stdout  # never listened
    return result


def test_app_is_imported_from_the_directory_it_was_started_in(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(APP.format(extra=""))
    line, stderr = serve(tmp_path, "main:app")
    assert line.endswith("(transport threads, wsgi app main:app, parser h11, loop asyncio)")
    assert "IMPORTED main" in stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _, stderr = serve(elsewhere, "main:app", "--app-dir", str(tmp_path))
    assert "IMPORTED main" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchmodule:app"], "no module named 'nosuchmodule'"),
        (["main:nothing"], "has no attribute 'nothing'"),
        (["main:NUMBER"], "not a WSGI or ASGI app"),
        (["main"], "module:attribute"),
    ],
)
def test_what_cannot_be_found_is_one_line_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "main.py").write_text(APP.format(extra="NUMBER = 3"))
    result = fails(tmp_path, *args)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("IMPORTED")]
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "error" in lines[0]


def test_the_users_own_error_is_its_traceback_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import helper\n")
    (tmp_path / "helper.py").write_text("raise KeyError('configuration missing')\n")
    result = fails(tmp_path, "main:app")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert 'helper.py", line 1' in result.stderr
    assert "KeyError: 'configuration missing'" in result.stderr
    (tmp_path / "helper.py").write_text("import nosuchdependency\n")
    result = fails(tmp_path, "main:app")
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'nosuchdependency'" in result.stderr


@pytest.mark.parametrize(
    ("code", "args", "status", "said"),
    [
        ("sys.exit(0)", [], 1, "'main:app' exited while being imported (sys.exit(0))"),
        ("sys.exit(4)", ["--workers", "1"], 4, "'main:app' exited while being imported (sys.exit(4))"),
        ("sys.exit('no config')", [], 1, "(sys.exit('no config'))"),
        (
            "def app():\n    sys.exit(2)",
            ["--factory"],
            2,
            "'main:app' exited while its factory ran (sys.exit(2))",
        ),
    ],
)
def test_an_app_that_exits_while_imported_says_so(
    tmp_path: Path, code: str, args: list[str], status: int, said: str
) -> None:
    """Not silence: one line; the module's status, but 1 for 0 (nothing was served: a process
    manager must see a failure); with --workers too."""
    (tmp_path / "main.py").write_text(f"import sys\n{code}\n")
    result = fails(tmp_path, "main:app", *args)
    assert result.returncode == status, result.stderr
    assert result.stderr.count("\n") == 1 and said in result.stderr and "not serving" in result.stderr, (
        result.stderr
    )


def test_a_failing_factory_is_named_as_the_factory_not_the_import(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("def create_app():\n    raise LookupError('no DATABASE_URL')\n")
    result = fails(tmp_path, "main:create_app", "--factory")
    assert result.returncode == 1
    assert "LookupError: no DATABASE_URL" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert "calling the factory 'main:create_app' failed (traceback above)" in last, last
    assert "importing" not in last


def test_lifespan_on_with_a_wsgi_app_is_a_warning_not_silence(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(APP.format(extra=""))
    _, stderr = serve(tmp_path, "main:app", "--lifespan", "on")
    assert "--lifespan on: main:app is a WSGI app, which has no lifespan" in stderr, stderr
    _, stderr = serve(tmp_path, "main:app")
    assert "lifespan" not in stderr, stderr


DJANGO_ASGI = """
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

settings.configure(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="tests")
urlpatterns = [path("", lambda request: HttpResponse("ok"))]

from django.core.asgi import get_asgi_application

app = get_asgi_application()
"""


def test_an_asyncio_only_asgi_app_on_trio_is_refused_in_one_line(tmp_path: Path) -> None:
    """Django's ASGI handler on trio (the default transport) failed every request with a 500
    (trio: 'unrecognized yield message'); it is said at start-up instead. On threads it serves."""
    (tmp_path / "main.py").write_text(DJANGO_ASGI)
    result = fails(tmp_path, "main:app", "--transport", "trio")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Django's ASGI handler runs on asyncio only" in lines[0]
    assert "--transport asyncio" in lines[0] and "threads" in lines[0]
    assert fails(tmp_path, "main:app", "--transport", "trio", "--workers", "2").returncode == 1
    serve(tmp_path, "main:app")  # threads


def test_an_app_that_configures_logging_does_not_silence_the_servers_logs(tmp_path: Path) -> None:
    """dictConfig's `disable_existing_loggers` (fileConfig's default; Django's LOGGING setting)
    disabled the server's loggers at the app's import: no access log, no error log. The app's
    root level (WARNING here) does not hide the server's own INFO lines either."""
    config = (
        "import logging.config\n"
        "logging.config.dictConfig({'version': 1, 'disable_existing_loggers': True, 'handlers': "
        "{'h': {'class': 'logging.StreamHandler'}}, 'root': {'handlers': ['h'], 'level': 'WARNING'}})"
    )
    (tmp_path / "main.py").write_text(APP.format(extra=config))
    _, stderr = serve(tmp_path, "main:app")
    assert '"GET / HTTP/1.1" 200 2' in stderr, stderr
    assert "shutdown complete" in stderr, stderr


ASGI_CONFIGURING_AT_STARTUP = """
import logging.config

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": True})
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def test_an_asgi_app_that_configures_logging_at_startup_does_not_silence_them(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(ASGI_CONFIGURING_AT_STARTUP)
    _, stderr = serve(tmp_path, "main:app")
    assert '"GET / HTTP/1.1" 200 2' in stderr and "shutdown complete" in stderr, stderr


def test_app_options_need_an_app_and_directory_is_for_the_builtin_routes(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(APP.format(extra=""))
    assert fails(tmp_path, "--root-path", "/api").returncode == 2
    result = fails(tmp_path, "main:app", "--directory", str(tmp_path))
    assert result.returncode == 2 and "--directory" in result.stderr


def make_venv(path: Path, *, runtime: bool) -> Path:
    """A virtual environment (no pip) holding the package `userdep`; with `runtime`, the server's
    pinned h11 and trio too (seen through a .pth file pointing at the project's .venv)."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(path)], check=True, timeout=60)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = path / "lib" / version / "site-packages"
    (site / "userdep").mkdir(parents=True)
    (site / "userdep" / "__init__.py").write_text("VALUE = 'from the user venv'\n")
    if runtime:
        ours = ROOT / ".venv" / "lib" / version / "site-packages"
        (site / "server_runtime.pth").write_text(f"{ours}\n")
    return path


def test_active_venv_without_the_runtime_lends_its_packages(tmp_path: Path) -> None:
    """The project's .venv runs the server; the app still finds the active environment's packages."""
    venv = make_venv(tmp_path / "venv", runtime=False)
    (tmp_path / "main.py").write_text(
        APP.format(extra="import userdep; print('USERDEP', userdep.VALUE, file=sys.stderr)")
    )
    _, stderr = serve(tmp_path, "main:app", env=environment(VIRTUAL_ENV=str(venv)))
    assert "USERDEP from the user venv" in stderr
    assert f"PREFIX {ROOT / '.venv'}" in stderr
    assert not (
        venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / "h11"
    ).exists()


def test_active_venv_with_the_runtime_runs_the_server(tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "venv", runtime=True)
    (tmp_path / "main.py").write_text(APP.format(extra="import userdep"))
    _, stderr = serve(tmp_path, "main:app", env=environment(VIRTUAL_ENV=str(venv)))
    assert f"PREFIX {venv}" in stderr  # the user's own Python: sys.executable is theirs


def test_help_documents_the_app_options(tmp_path: Path) -> None:
    result = subprocess.run([PROGRAM, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for word in ("APP", "--app-dir", "--factory", "--interface", "--root-path"):
        assert word in result.stdout, word
    assert "else the built-in routes\n" in result.stdout  # no "(default: None)" after it
