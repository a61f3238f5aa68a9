"""The command line: `python -m transports` (what ./your_program.sh runs).

Only the chosen transport's runtime is imported, so that start-up stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import logging
import os
import re
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from handlers.loading import INTERFACES, LoadError, asyncio_only, load_app, use_active_venv
from protocol import PARSERS, App, Config, ParserUnavailable, select_parser
from protocol.proxy import DEFAULT_ALLOW, TrustedProxies

from . import logs
from .common import bind, hold_stop_signals, url
from .listeners import UDS_MODE, Listeners, bind_unix, inherited_all, systemd_fds
from .loops import LOOP_TRANSPORTS, LOOPS, LoopUnavailable, new_loop_factory
from .options import Lifespan, ServerOptions, hooks

if TYPE_CHECKING:
    import ssl

_MODULES = {"trio": "trio_server", "asyncio": "asyncio_server", "threads": "thread_server"}


def parser() -> argparse.ArgumentParser:
    config = Config()
    options = ServerOptions()
    p = argparse.ArgumentParser(
        prog=_program_name(),
        description="An HTTP/1.1 server: a sans-IO core on h11 driven by trio, asyncio or threads. "
        "Relative paths are relative to the current directory; sizes are bytes or take a k, m or g "
        "suffix (512k, 1m, 2g); times are seconds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "app",
        nargs="?",
        metavar="APP",
        # "%(default).0s" prints nothing, and keeps the formatter from adding "(default: None)".
        help="serve this WSGI or ASGI app, 'module:attribute' (e.g. main:app); else the built-in routes"
        "%(default).0s",
    )
    p.add_argument("--transport", choices=tuple(_MODULES), default="trio", help="the I/O runtime")
    p.add_argument("--host", default=options.host, help="address to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=_port, default=options.port, help="TCP port; 0 picks a free one")
    p.add_argument(
        "--directory",
        type=_directory,
        help="serve and store /files/ here, an existing directory (built-in routes; not with APP)",
    )
    p.add_argument(
        "--mime-types",
        action="store_true",
        help="serve /files/ with the Content-Type their name suggests (text/html for .html...; "
        "Python's mimetypes table); without it, every file is application/octet-stream (built-in routes)",
    )
    _add_listening_options(p)

    apps = p.add_argument_group("serving your app (APP)")
    apps.add_argument(
        "--app-dir",
        metavar="DIR",
        help="import APP's module from here (first on sys.path); default: the current directory%(default).0s",
    )
    apps.add_argument("--factory", action="store_true", help="APP is a factory: call it to get the app")
    apps.add_argument(
        "--interface",
        choices=INTERFACES,
        default="auto",
        help="auto: ASGI for a coroutine function (or an object whose __call__ is one), else WSGI",
    )
    apps.add_argument(
        "--root-path",
        metavar="PATH",
        default="",
        type=_root_path,
        help="the app is mounted at PATH (SCRIPT_NAME / root_path); stripped from paths that start with it"
        "%(default).0s",
    )
    apps.add_argument(
        "--lifespan",
        choices=("auto", "on", "off"),
        default="auto",
        help="ASGI lifespan (startup/shutdown): auto: used if the app speaks it; on: required "
        "(a failed startup exits with status 3); off: never",
    )
    apps.add_argument(
        "--lifespan-startup-timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=60.0,
        help="ASGI lifespan: the app's startup must complete within this (else: exit status 3)",
    )
    apps.add_argument(
        "--lifespan-shutdown-timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=30.0,
        help="ASGI lifespan: the app's shutdown gets this long (then it is cancelled)",
    )

    websockets = p.add_argument_group("WebSockets (ASGI apps; RFC 6455 with permessage-deflate, on wsproto)")
    websockets.add_argument(
        "--ws",
        choices=("auto", "wsproto", "none"),
        default="auto",
        help="auto or wsproto: serve WebSocket handshakes to an ASGI app; none: they are ordinary requests",
    )
    websockets.add_argument(
        "--ws-max-size",
        metavar="BYTES",
        type=_size,
        default=config.ws_max_size,
        help="a larger message closes the WebSocket with 1009",
    )
    websockets.add_argument(
        "--ws-ping-interval",
        metavar="SECONDS",
        type=_non_negative_float,
        default=config.ws_ping_interval,
        help="ping a peer that sent nothing for this long (0: never)",
    )
    websockets.add_argument(
        "--ws-ping-timeout",
        metavar="SECONDS",
        type=_non_negative_float,
        default=config.ws_ping_timeout,
        help="a pinged peer must answer within this, else it is closed with 1011 (0: no limit)",
    )
    websockets.add_argument(
        "--ws-per-message-deflate",
        metavar="BOOL",
        type=_boolean,
        default=config.ws_per_message_deflate,
        help="accept the permessage-deflate extension when a client offers it (true or false)",
    )

    speed = p.add_argument_group("speed (optional extras: pip install '.[fast]')")
    speed.add_argument(
        "--parser",
        choices=tuple(PARSERS),
        default="h11",
        help="the HTTP parser: h11, or h11-mypyc (the same h11 compiled with mypyc, ~2x faster)",
    )
    speed.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="the event loop of the asyncio transport, and of the threads transport's ASGI apps:"
        " asyncio's own, or uvloop",
    )

    limits = p.add_argument_group("limits and timeouts of the HTTP core")
    for field, kind, text in _LIMITS:
        flag = "--" + field.replace("_", "-")
        limits.add_argument(flag, type=kind, default=getattr(config, field), help=text)

    responses = p.add_argument_group("responses and logs")
    responses.add_argument("--date-header", action="store_true", help="add a Date header to every response")
    responses.add_argument(
        "--server-header", metavar="VALUE", type=_header_value, help="add 'Server: VALUE' to every response"
    )
    responses.add_argument(
        "--no-access-log",
        action="store_true",
        help="do not log one line per response (httpserver.access; on whatever --log-level says)",
    )
    responses.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="the other logs' level (errors, shutdown, workers), to stderr",
    )

    server = p.add_argument_group("server")
    server.add_argument(
        "--max-connections",
        type=_positive_int,
        default=options.max_connections,
        help="concurrent connections per process; at the limit a new client takes the slot of one "
        "waiting for a request, else waits in the listen backlog",
    )
    server.add_argument("--backlog", type=_positive_int, default=options.backlog, help="the listen backlog")
    server.add_argument(
        "--shutdown-grace",
        metavar="SECONDS",
        type=_non_negative_float,
        default=options.shutdown_grace,
        help="on SIGTERM/SIGINT, in-flight requests get this long to finish (a second signal: at once)",
    )
    server.add_argument(
        "--certfile",
        type=_readable_file,
        help="serve HTTPS with this PEM certificate chain (needs --keyfile)",
    )
    server.add_argument("--keyfile", type=_readable_file, help="the PEM private key for --certfile")
    server.add_argument(
        "--workers",
        metavar="N",
        type=_positive_int,
        help="run N worker processes sharing the listening socket, under a supervisor that replaces "
        "a dead one and reloads them on SIGHUP (new workers start, then the old ones finish); "
        "without it, one process serves and SIGHUP is ignored",
    )
    server.add_argument(
        "--threads",
        metavar="N",
        type=_positive_int,
        # `%(default).0s` prints nothing: a help that names %(default) gets no "(default: None)"
        # from ArgumentDefaultsHelpFormatter; the real default is in the text.
        help=f"blocking steps (disk work, WSGI app calls) run at once per process (default "
        f"{options.threads}); with --transport threads also the connections served at once%(default).0s",
    )
    return p


def _add_listening_options(p: argparse.ArgumentParser) -> None:
    """Where to listen besides --host/--port, and whom to believe behind a proxy."""
    listening = p.add_argument_group(
        "listening elsewhere (instead of --host/--port; systemd's sockets, LISTEN_FDS, replace all)"
    )
    where = listening.add_mutually_exclusive_group()
    where.add_argument("--uds", metavar="PATH", help="listen on this Unix socket (a stale one is replaced)")
    where.add_argument("--fd", metavar="N", type=_fd, help="serve on this inherited listening socket")
    listening.add_argument(
        "--uds-mode",
        metavar="MODE",
        type=_octal_mode,
        default=f"{UDS_MODE:o}",
        help="permissions of the --uds socket file, in octal",
    )
    proxy = p.add_argument_group("behind a proxy")
    proxy.add_argument(
        "--proxy-headers",
        action="store_true",
        help="believe X-Forwarded-For/-Proto and Forwarded from --forwarded-allow-ips: "
        "the real client and scheme (the access log shows the client)",
    )
    proxy.add_argument(
        "--forwarded-allow-ips",
        metavar="LIST",
        type=_trusted_proxies,
        default=os.environ.get("FORWARDED_ALLOW_IPS", DEFAULT_ALLOW),
        help="comma-separated addresses and networks (10.0.0.0/8) of trusted proxies, or *; "
        "Unix-socket peers always are (default from $FORWARDED_ALLOW_IPS if set)",
    )


def _fd(value: str) -> int:
    number = int(_number(value, int, "a file descriptor"))
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is not a file descriptor")
    return number


def _octal_mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an octal mode like 660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{value!r} is not an octal mode like 660")
    return mode


def _trusted_proxies(value: str) -> TrustedProxies:
    try:
        return TrustedProxies.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def listen(args: argparse.Namespace, options: ServerOptions) -> Listeners:
    """The listening sockets the command line asks for: systemd's when it passed some,
    else --fd, else --uds, else --host/--port. Raises OSError saying which failed."""
    fds = systemd_fds()
    if fds:
        where = f"the sockets systemd passed (fds {fds[0]}-{fds[-1]})"
    elif args.fd is not None:
        where = f"fd {args.fd}"
    elif args.uds is not None:
        where = f"unix:{args.uds}"
    else:
        where = f"{args.host}:{args.port}"
    try:
        if fds:
            return inherited_all(fds, "systemd")
        if args.fd is not None:
            return inherited_all([args.fd])
        if args.uds is not None:
            return bind_unix(args.uds, mode=args.uds_mode, backlog=options.backlog)
        return Listeners(bind(options))
    except OSError as exc:
        raise OSError(f"cannot listen on {where}: {exc}") from exc


def _program_name() -> str:
    """`h11-server` when installed (pip install .), else the script that runs `python -m transports`."""
    name = Path(sys.argv[0]).name
    return name if name == "h11-server" else "your_program.sh"


def _directory(value: str) -> Path:
    path = Path(value).resolve()
    if not path.is_dir():
        reason = "does not exist" if not path.exists() else "is not a directory"
        raise argparse.ArgumentTypeError(f"{value!r} ({path}) {reason}")
    return path


def _readable_file(value: str) -> Path:
    path = Path(value).absolute()  # symlinks kept: a reload reads a renewed certificate's new target
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {value!r} ({path}): {exc.strerror}") from None
    return path


def _number(value: str, kind: Callable[[str], float], what: str) -> float:
    try:
        return kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None


def _positive_int(value: str) -> int:
    number = int(_number(value, int, "a whole number"))
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return number


_SIZE = re.compile(r"([0-9]+)([kmg]?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _size(value: str) -> int:
    """Bytes, or with nginx's suffixes: k (KiB), m (MiB), g (GiB), any case. At least 1."""
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a size (bytes, or with k, m or g: 512k, 1m, 2g)")
    size = int(match[1]) * _UNITS[match[2].lower()]
    if size < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1 byte")
    return size


def _positive_float(value: str) -> float:
    number = _number(value, float, "a number of seconds")
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of seconds")
    return number


def _non_negative_float(value: str) -> float:
    number = _number(value, float, "a number of seconds")
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not a number of seconds (0 or more)")
    return number


def _port(value: str) -> int:
    port = int(_number(value, int, "a TCP port (0 to 65535)"))
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0 to 65535)")
    return port


def _root_path(value: str) -> str:
    path = value.rstrip("/")
    if path and not path.startswith("/"):
        raise argparse.ArgumentTypeError(f"{value!r} does not start with '/'")
    if any(ord(c) < 0x21 or c in "?#" for c in path):
        raise argparse.ArgumentTypeError(f"{value!r} is not a path (spaces, controls, '?' or '#')")
    return path


def _boolean(value: str) -> bool:
    lower = value.lower()
    if lower in ("true", "1", "yes", "on"):
        return True
    if lower in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not true or false")


def _header_value(value: str) -> bytes:
    try:
        data = value.encode("latin-1")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("use Latin-1 characters only") from None
    if any((byte < 0x20 and byte != 0x09) or byte == 0x7F for byte in data):
        raise argparse.ArgumentTypeError("no control characters")
    return data


_LIMITS: tuple[tuple[str, Callable[[str], object], str], ...] = (
    (
        "max_head_size",
        _size,
        "request line and header fields (431; a request line alone over it: 414)",
    ),
    ("max_target_length", _size, "request target (414)"),
    ("max_header_count", _positive_int, "header fields in one request, and trailer fields (431)"),
    ("max_body_size", _size, "request body, declared or chunked (413)"),
    (
        "keep_alive_timeout",
        _non_negative_float,
        "an idle connection is closed after this; 0: no keep-alive (Connection: close on every response)",
    ),
    ("head_timeout", _positive_float, "a request head must arrive within this from its first byte (408)"),
    ("body_timeout", _positive_float, "a request body must make progress this often (408)"),
    (
        "send_timeout",
        _positive_float,
        "a client that takes no byte of a response for this long is dropped (a slow, steady one is served)",
    ),
    ("linger_timeout", _positive_float, "after a closing response, unread input is discarded this long"),
    ("send_chunk_size", _size, "file bodies go out in pieces of at most this"),
)
"""The `Config` fields set from the command line, each as --field-name."""


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (args.certfile is None) != (args.keyfile is None):
        p.error("--certfile and --keyfile go together")
    if args.loop != "asyncio" and args.transport not in LOOP_TRANSPORTS:
        p.error(f"--loop {args.loop} needs --transport {' or '.join(sorted(LOOP_TRANSPORTS))}")
    if args.transport == "threads" and not hasattr(select, "epoll"):  # its reactor is an epoll
        p.error("--transport threads needs Linux (epoll); use --transport asyncio or trio here")
    try:  # an extra that is not installed: one line saying what to install, exit 1
        select_parser(args.parser)
        new_loop_factory(args.loop)
    except (ParserUnavailable, LoopUnavailable) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 1
    supervised = args.workers is not None
    logs.configure(args.log_level, access_log=not args.no_access_log, process_ids=supervised)
    config = Config(
        **{field: getattr(args, field) for field, _, _ in _LIMITS},
        date_header=args.date_header,
        server_header=args.server_header or b"",
        access_log=not args.no_access_log,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        ws_max_size=args.ws_max_size,
        ws_ping_interval=args.ws_ping_interval or None,
        ws_ping_timeout=args.ws_ping_timeout or None,
        ws_per_message_deflate=args.ws_per_message_deflate,
    )
    certificates = None if args.certfile is None else (args.certfile, args.keyfile)
    try:
        context = None if certificates is None else tls_context(*certificates)
    except (OSError, ValueError) as exc:  # ssl.SSLError included
        p.error(str(exc))
    options = ServerOptions(
        host=args.host,
        port=args.port,
        max_connections=args.max_connections,
        shutdown_grace=args.shutdown_grace,
        backlog=args.backlog,
        ssl_context=context,
        workers=args.workers or 1,
        threads=ServerOptions().threads if args.threads is None else args.threads,
        loop_factory=None if args.loop == "asyncio" else new_loop_factory(args.loop),
        handle_signals=True,
    )
    app: App | None = None
    make_app: Callable[[], App]
    if args.app is None:
        for flag, given in (
            ("--app-dir", args.app_dir is not None),
            ("--factory", args.factory),
            ("--interface", args.interface != "auto"),
            ("--root-path", bool(args.root_path)),
            ("--lifespan", args.lifespan != "auto"),
            ("--ws", args.ws != "auto"),
        ):
            if given:
                p.error(f"{flag} needs APP (module:attribute)")
        if args.directory is not None and not os.access(args.directory, os.W_OK | os.X_OK):
            logging.getLogger("httpserver.error").warning(
                "--directory %s is not writable: uploads to it will get 403", args.directory
            )
        make_app = functools.partial(_build_app, args.directory, args.mime_types)
        directory = "none" if args.directory is None else str(args.directory)
        serving = f"directory {directory}"
    else:
        if args.directory is not None:
            p.error("--directory serves the built-in /files/ routes; with APP, your app serves every path")
        if args.mime_types:
            p.error("--mime-types is for the built-in /files/ routes; with APP, your app sets Content-Type")
        warning = use_active_venv()
        if warning is not None:
            print(f"{p.prog}: warning: {warning}", file=sys.stderr)
        if supervised:  # workers import it (see `_work`); a trial import says now if that fails
            interface = _trial(functools.partial(load_user_app, args, p.prog))
        else:
            loaded = load_user_app(args, p.prog)
            if loaded is None:
                return 1
            app, interface = loaded
        make_app = functools.partial(_user_app_or_exit, args, p.prog)
        serving = f"{interface} app {args.app}"
        if interface == "asgi" and args.ws != "none":
            config = dataclasses.replace(config, websocket=True)
            from handlers.asgi_ws import accelerate

            accelerate()  # compiled unmasking when the `websockets` package is installed
    importlib.import_module(f"transports.{_MODULES[args.transport]}")  # before announcing readiness
    if not supervised and app is None:
        app = make_app()
    with_lifespan = functools.partial(_with_lifespan, args)
    try:
        listeners = listen(args, options)
    except OSError as exc:
        logging.getLogger("httpserver.error").error("%s", exc)
        return 1
    sockets = listeners.sockets
    # Before the start-up line, which tells a caller it may signal: a SIGHUP must not kill us.
    # (The supervisor sets its own handler at once; the first workers are not started yet.)
    signal.signal(signal.SIGHUP, signal.SIG_IGN if supervised else _ignore_hangup)
    hold_stop_signals()  # until the server's handlers are in place: a SIGTERM then stops it gracefully
    loop = f", loop {args.loop}" if args.transport in LOOP_TRANSPORTS else ""
    print(
        f"Listening on {url(sockets, tls=options.ssl_context is not None)}"
        f" (transport {args.transport}, {serving}, parser {args.parser}{loop})",
        flush=True,
    )
    status = 0
    try:
        if supervised:
            from .workers import supervise

            work = functools.partial(
                _work, args.transport, make_app, with_lifespan, config, options, sockets, certificates
            )
            status = supervise(options.workers, work, sockets)
        else:
            assert app is not None
            status = serve_status(args.transport, app, config, with_lifespan(options, app), sockets)
    except KeyboardInterrupt:  # only before the signal handlers are in place
        pass
    finally:
        listeners.close()  # and remove the --uds socket file
    return status


def _build_app(directory: Path | None, mime_types: bool) -> App:
    from handlers import build_app

    return build_app(directory, mime_types=mime_types)


def load_user_app(args: argparse.Namespace, prog: str) -> tuple[App, str] | None:
    """Import APP and wrap it for the core: (app, "wsgi" | "asgi"), or None once the reason
    it failed is printed (one line for what the user fixes on the command line, the
    traceback for an exception raised by the user's own code).

    A module or factory that calls sys.exit() is said in one line, and the program exits
    (SystemExit) with its status, 1 for 0.

    Without --workers it runs once, before the server listens. With --workers each worker
    runs it after the fork, so that a reload (SIGHUP) imports the app's code as it is then;
    the supervisor never imports the app, and tries the import once in a throwaway process
    before it listens (`_trial`), so that errors are still reported once, up front.
    """
    try:
        interface, target = load_app(
            args.app, app_dir=args.app_dir, factory=args.factory, interface=args.interface
        )
        logs.reclaim()  # its import may have disabled the server's loggers
        framework = asyncio_only(target) if interface == "asgi" and args.transport == "trio" else None
        if framework is not None:  # else every request would fail on trio with a 500
            print(
                f"{prog}: error: cannot serve {args.app!r} on trio: {framework} runs on asyncio only; "
                "use --transport asyncio or --transport threads (trio serves anyio-based apps: "
                "Starlette, FastAPI, Litestar)",
                file=sys.stderr,
            )
            return None
        return serving_app(interface, target, args), interface
    except LoadError as exc:
        print(f"{prog}: error: cannot load {args.app!r}: {exc}", file=sys.stderr)
    except Exception:  # raised by the user's module or factory: their traceback
        traceback.print_exc()
        what = "calling the factory" if _in_factory(args) else "importing"
        print(f"{prog}: error: {what} {args.app!r} failed (traceback above)", file=sys.stderr)
    except SystemExit as exc:  # the module (or factory) called sys.exit(): said, not silent
        # Its status, but 1 for 0: nothing was served, and a process manager (systemd's
        # Restart=on-failure, a container's restart policy) must see a failure, not a clean stop.
        status = exc.code if isinstance(exc.code, int) and exc.code else 1
        when = "while its factory ran" if _in_factory(args) else "while being imported"
        print(
            f"{prog}: error: {args.app!r} exited {when} (sys.exit({exc.code!r})): not serving",
            file=sys.stderr,
        )
        raise SystemExit(status) from None
    return None


def _in_factory(args: argparse.Namespace) -> bool:
    """Whether what just failed was APP's factory: a module whose import failed is not left in
    sys.modules."""
    return bool(args.factory) and args.app.partition(":")[0] in sys.modules


def _user_app_or_exit(args: argparse.Namespace, prog: str) -> App:
    """In a worker: the app, freshly imported; exit status 1 once the reason is printed."""
    loaded = load_user_app(args, prog)
    if loaded is None:
        raise SystemExit(1)
    return loaded[0]


def _trial(load: Callable[[], tuple[App, str] | None]) -> str:
    """Run `load` in a child process, which exits after it: the interface it found; else
    SystemExit with the child's status (it printed why). The caller imports nothing of the app."""
    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            loaded = load()
            if loaded is not None:
                os.write(write, loaded[1].encode())
                code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        interface = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not interface:
        raise SystemExit(code if code > 0 else 1)
    return interface


def serving_app(interface: str, target: Any, args: argparse.Namespace) -> App:
    """The core's `App` serving a loaded WSGI or ASGI app."""
    if interface == "wsgi":
        from handlers.wsgi import WSGIApp

        return WSGIApp(target, root_path=args.root_path, multiprocess=(args.workers or 1) > 1)
    from handlers.asgi import ASGIApp

    return ASGIApp(target, root_path=args.root_path)


def asgi_lifespan(args: argparse.Namespace, app: App) -> Lifespan | None:
    """The transport's lifespan hook for an ASGI app (None: WSGI, or --lifespan off): the app's
    startup before the server accepts, its shutdown once drained, on the loop its requests use."""
    from handlers.asgi import ASGIApp

    if not isinstance(app, ASGIApp):
        if args.lifespan == "on":  # asked for, and impossible: said, not silently ignored
            logging.getLogger("httpserver.error").warning(
                "--lifespan on: %s is a WSGI app, which has no lifespan (ASGI's); serving without it",
                args.app,
            )
        return None
    if args.lifespan == "off":
        return None
    from handlers.lifespan import Lifespan as AppLifespan

    lifespan = AppLifespan(
        app.app,
        args.lifespan,
        startup_timeout=args.lifespan_startup_timeout,
        shutdown_timeout=args.lifespan_shutdown_timeout,
        state=app.state,
    )

    async def startup() -> None:
        try:
            await lifespan.startup()
        finally:
            logs.reclaim()  # an app may configure logging in its startup too

    return hooks(startup, lifespan.shutdown)


STARTUP_FAILED = 3
"""The exit status when the app's startup failed (ASGI lifespan), as uvicorn's."""


def serve_status(
    transport: str,
    app: App,
    config: Config,
    options: ServerOptions,
    sockets: Sequence[socket.socket],
    started: Callable[[], None] | None = None,
) -> int:
    """`run` with the app's lifespan, as an exit status: 0, or STARTUP_FAILED when the app's
    startup failed (logged)."""
    try:
        run(transport, app, config, options, sockets, started=started)
    except BaseException as exc:
        if options.lifespan is None:
            raise
        from handlers.lifespan import LifespanFailed

        if isinstance(exc, LifespanFailed) or (
            isinstance(exc, BaseExceptionGroup) and exc.subgroup(LifespanFailed) is not None
        ):
            logging.getLogger("httpserver.error").error("the app's startup failed: not serving")
            return STARTUP_FAILED
        raise
    return 0


def _with_lifespan(args: argparse.Namespace, options: ServerOptions, app: App) -> ServerOptions:
    """`options` with the lifespan of `app` (an ASGI app's startup and shutdown), if any."""
    return dataclasses.replace(options, lifespan=asgi_lifespan(args, app))


def _work(
    transport: str,
    make_app: Callable[[], App],
    with_lifespan: Callable[[ServerOptions, App], ServerOptions],
    config: Config,
    options: ServerOptions,
    sockets: Sequence[socket.socket],
    certificates: tuple[Path, Path] | None,
    ready: Callable[[], None],
) -> None:
    """A worker (after the fork): build the app and TLS context afresh, as a reload wants, and serve."""
    if certificates is not None:
        options = dataclasses.replace(options, ssl_context=tls_context(*certificates))
    app = make_app()
    status = serve_status(transport, app, config, with_lifespan(options, app), sockets, started=ready)
    if status:
        raise SystemExit(status)


def _ignore_hangup(signum: int, frame: FrameType | None) -> None:
    logs.server_log.warning("SIGHUP ignored: reloading needs --workers (--workers 1 for one process)")


def run(
    transport: str,
    app: App,
    config: Config,
    options: ServerOptions,
    sockets: Sequence[socket.socket],
    *,
    started: Callable[[], None] | None = None,
) -> None:
    """Serve on `sockets` with `transport` until a signal stops it; `started()` once serving."""
    if transport == "trio":
        import trio

        from . import trio_server

        class Report:  # `serve`'s task_status (not nursery.start's: a stop during startup never serves)
            def started(self, value: object = None) -> None:
                if started is not None:
                    started()

        trio.run(
            functools.partial(trio_server.serve, app, config, options, sockets=sockets, task_status=Report())
        )
    elif transport == "asyncio":
        from . import asyncio_server, loops

        report = None if started is None else lambda server: started()
        loops.run(
            asyncio_server.serve(app, config, options, sockets=sockets, started=report), options.loop_factory
        )
    else:
        from . import thread_server

        report = None if started is None else lambda server: started()
        thread_server.serve(app, config, options, sockets=sockets, started=report)


def tls_context(certfile: str | Path, keyfile: str | Path) -> ssl.SSLContext:
    """A server-side TLS context with the default (secure) settings, offering http/1.1.

    Errors name the files: ValueError when they hold no PEM certificate or key, or a key that
    is not the certificate's; OSError when they cannot be read."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        problem = _pem_problem(certfile, keyfile, exc)
        raise ValueError(f"cannot use --certfile {certfile} with --keyfile {keyfile}: {problem}") from None
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot read --certfile {certfile} or --keyfile {keyfile}: {exc.strerror}"
        ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


def _pem_problem(certfile: str | Path, keyfile: str | Path, exc: Exception) -> str:
    """Which file is wrong, as far as a look at them tells."""
    try:
        cert = Path(certfile).read_bytes()
        key = Path(keyfile).read_bytes()
    except OSError as error:
        return str(error)
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        return f"{certfile} holds no PEM certificate"
    if b"PRIVATE KEY-----" not in key:
        return f"{keyfile} holds no PEM private key"
    if "KEY_VALUES_MISMATCH" in str(exc):
        return "the key is not the certificate's"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
