"""The command line covers every `Config` field and refuses bad values with a usage error."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from protocol import Config
from protocol.parser import current_parser
from transports.cli import main, parser

_SPECIAL = {
    "date_header": "--date-header",
    "server_header": "--server-header",
    "access_log": "--no-access-log",
    "websocket": "--ws",  # on for ASGI apps unless --ws none
}


def test_every_config_field_has_an_option() -> None:
    options = {flag for action in parser()._actions for flag in action.option_strings}
    for field in dataclasses.fields(Config):
        assert _SPECIAL.get(field.name, "--" + field.name.replace("_", "-")) in options, field.name


def test_defaults_are_the_config_defaults() -> None:
    args = parser().parse_args([])
    for field in dataclasses.fields(Config):
        if field.name not in _SPECIAL:
            assert getattr(args, field.name) == getattr(Config(), field.name), field.name
    assert (args.transport, args.host, args.port, args.directory) == ("trio", "127.0.0.1", 4221, None)
    assert (args.parser, args.loop) == ("h11", "asyncio")  # the speed extras are never the default


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "65536"],
        ["--max-body-size", "0"],
        ["--keep-alive-timeout", "-1"],
        ["--keep-alive-timeout", "nan"],
        ["--workers", "0"],
        ["--threads", "0"],
        ["--server-header", "a\r\nb"],
        ["--directory", "/no/such/directory"],
        ["--transport", "gevent"],
        ["--ws", "websockets"],
        ["--ws-max-size", "0"],
        ["--ws-ping-interval", "-1"],
        ["--ws-per-message-deflate", "maybe"],
        ["--parser", "httptools"],
        ["--loop", "tokio"],
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        parser().parse_args(argv)
    assert exit.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "abc"], "argument --port: 'abc' is not a TCP port (0 to 65535)"),
        (["--workers", "two"], "argument --workers: 'two' is not a whole number"),
        (["--max-body-size", "1x"], "argument --max-body-size: '1x' is not a size"),
        (["--body-timeout", "soon"], "argument --body-timeout: 'soon' is not a number of seconds"),
        (["--keep-alive-timeout", "-1"], "argument --keep-alive-timeout: -1 is not a number of seconds"),
    ],
)
def test_errors_name_the_option_not_an_internal_function(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
    err = capsys.readouterr().err
    assert message in err, err
    assert "invalid" not in err and "_port" not in err, err


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1048576", 1 << 20),
        ("1M", 1 << 20),
        ("1m", 1 << 20),
        ("512k", 512 << 10),
        ("512K", 512 << 10),
        ("2g", 2 << 30),
    ],
)
def test_sizes_take_nginx_suffixes(value: str, size: int) -> None:
    args = parser().parse_args(
        ["--max-body-size", value, "--max-head-size", value, "--send-chunk-size", value]
    )
    assert (args.max_body_size, args.max_head_size, args.send_chunk_size) == (size, size, size)


def test_keep_alive_timeout_zero_is_accepted() -> None:
    assert parser().parse_args(["--keep-alive-timeout", "0"]).keep_alive_timeout == 0


@pytest.mark.parametrize("transport", ["trio", "asyncio", "threads"])
def test_threads_is_parsed_for_every_transport(transport: str) -> None:
    assert parser().parse_args(["--transport", transport, "--threads", "8"]).threads == 8


def test_loop_is_for_the_asyncio_transport(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--transport", "trio", "--loop", "uvloop"])
    assert exit.value.code == 2
    assert "--loop uvloop needs --transport asyncio" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("module", "argv", "package"),
    [
        ("h11_mypyc", ["--parser", "h11-mypyc"], "h11-mypyc"),
        ("uvloop", ["--transport", "asyncio", "--loop", "uvloop"], "uvloop"),
    ],
)
def test_a_missing_extra_is_one_clear_line_and_exit_1(
    module: str,
    argv: list[str],
    package: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    assert main([*argv, "--port", "0"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert f"needs the {package} package" in err and "requirements-fast.txt" in err, err
    assert current_parser() == "h11"


def test_threads_transport_without_epoll_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where there is no epoll (macOS, Windows) the threads transport says so at once."""
    import select

    monkeypatch.delattr(select, "epoll", raising=False)
    with pytest.raises(SystemExit) as exit:
        main(["--transport", "threads"])
    assert exit.value.code == 2
    assert "--transport threads needs Linux (epoll)" in capsys.readouterr().err
