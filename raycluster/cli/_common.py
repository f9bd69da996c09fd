"""What the subcommands share: the one-line error, config and Redis URL lookup, logging."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from raycluster.errors import ConfigError, RayclusterError

if TYPE_CHECKING:
    from pydantic import ValidationError

    from raycluster.config import TierSettings

__all__ = (
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "CommandError",
    "Progress",
    "config_path",
    "load_settings",
    "redis_url_of",
    "settings_error_line",
    "setup_logging",
    "validation_line",
)

EXIT_RUNTIME = 1
EXIT_USAGE = 2
CONFIG_ENV = "RAYCLUSTER_CONFIG"


class CommandError(RayclusterError):
    """Raised by a subcommand for an expected failure: `main` prints the message, exits `code`.

    `code` is 2 when the command line itself is wrong, 1 for anything else.
    """

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        self.code = code
        super().__init__(message)


def config_path(given: str | None) -> str | None:
    """`--config`, else `$RAYCLUSTER_CONFIG`, else `./configs/tier.yaml` if it exists, else None."""
    if given:
        return given
    env = os.environ.get(CONFIG_ENV)
    if env:
        return env
    local = Path("configs") / "tier.yaml"
    return str(local) if local.is_file() else None


def load_settings(given: str | None, **overrides: object) -> TierSettings:
    """The tier settings of `--config` (see `config_path`) and the environment.

    A file that cannot be read or used, a bad value or an unknown key (in the
    file or a `RAYCLUSTER_*` variable) is a usage `CommandError` naming it.
    """
    from pydantic import ValidationError

    from raycluster.config import TierSettings

    path = config_path(given)
    where = f"config {path}" if path else "settings"
    try:
        return TierSettings.load(path, **overrides)
    except OSError as e:
        raise CommandError(f"cannot read config {path}: {e.strerror or e}", EXIT_USAGE) from e
    except ValidationError as e:
        raise CommandError(settings_error_line(e, where), EXIT_USAGE) from e
    except ConfigError as e:  # already names the file or the variable
        raise CommandError(_one_line(e), EXIT_USAGE) from e
    except (RayclusterError, ValueError) as e:
        raise CommandError(f"{where}: {_one_line(e)}", EXIT_USAGE) from e


def validation_line(e: ValidationError) -> str:
    """The first error of a pydantic `ValidationError` on one line: `field.path: why`."""
    first = e.errors()[0]
    where = ".".join(str(x) for x in first["loc"])
    if first["type"] == "extra_forbidden":
        msg = "unknown key (a typo? see docs/configuration.md)"
    else:
        msg = str(first["msg"]).removeprefix("Value error, ")
    more = e.error_count() - 1
    tail = f" (and {more} more error(s))" if more else ""
    return (f"{where}: {msg}" if where else msg) + tail


def settings_error_line(e: ValidationError, where: str) -> str:
    """`validation_line`, said of the environment variable that set the field if one did."""
    loc = [str(x) for x in e.errors()[0]["loc"]]
    env = _env_name_of(loc)
    return f"{f'environment ({env})' if env else where}: {validation_line(e)}"


def _env_name_of(loc: list[str]) -> str | None:
    """The `RAYCLUSTER_*` variable that set the field at `loc` (or a section above it)."""
    from raycluster.redis.settings import ENV_PREFIX

    names = {k.upper(): k for k in os.environ}
    for n in range(len(loc), 0, -1):
        nested = ENV_PREFIX + "__".join(loc[:n]).upper()
        if nested in names:
            return names[nested]
    if len(loc) >= 2 and loc[0] == "redis" and (flat := ENV_PREFIX + loc[1].upper()) in names:
        return names[flat]
    return None


def redis_url_of(given: str | None, settings: TierSettings) -> str:
    """`--redis-url`, else `RAYCLUSTER_REDIS_URL`, else the config's `redis.redis_url`.

    (`TierSettings.load` already puts the environment over the file.)
    """
    url = given or settings.redis.redis_url
    if not url:
        raise CommandError(
            "no Redis URL: pass --redis-url, set RAYCLUSTER_REDIS_URL, "
            "or set redis.redis_url in the --config file",
            EXIT_USAGE,
        )
    return url


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


class _Formatter(logging.Formatter):
    """`raycluster: warning: …`, tracebacks only with --debug."""

    def __init__(self, debug: bool) -> None:
        super().__init__("raycluster: %(levelname)s: %(message)s")
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        if not self.debug:
            record.exc_info = None
            record.exc_text = None
            return " ".join(super().format(record).split())
        return super().format(record)


class _Quiet(logging.Filter):
    """Drops a message already shown in the last `window_s` (a reconnect loop says it often)."""

    def __init__(self, window_s: float = 30.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        last = self._seen.get(key)
        if last is not None and record.created - last < self.window_s:
            return False
        self._seen[key] = record.created
        return True


def setup_logging(debug: bool) -> Callable[[], None]:
    """Warnings of the library (with --debug, everything and tracebacks) on stderr.

    Configures the `raycluster` logger only, and returns the undo (so a
    `main([...])` called in-process leaves logging as it found it). Without
    --debug a repeated message is shown once per 30 s.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(debug))
    if not debug:
        handler.addFilter(_Quiet())
    logger = logging.getLogger("raycluster")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return undo


class Progress:
    """A progress line on stderr for long operations.

    Silent for the first `after_s`; then, on a terminal, one line rewritten in
    place at most every 0.2 s; otherwise a new line every `every_s`.
    """

    def __init__(
        self, *, after_s: float = 1.0, every_s: float = 5.0, stream: TextIO | None = None
    ) -> None:
        import time

        self._clock = time.monotonic
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.start = self._clock()
        self._after = after_s
        self._every = 0.2 if self.tty else every_s
        self._last = 0.0
        self._shown = False

    def elapsed_s(self) -> float:
        """Seconds since this progress began."""
        return self._clock() - self.start

    def update(self, text: str) -> None:
        """Show `text` if it is time to."""
        now = self._clock()
        if now - self.start < self._after or now - self._last < self._every:
            return
        self._last = now
        self._shown = True
        if self.tty:
            self.stream.write(f"\r\x1b[Kraycluster: {text}")
        else:
            self.stream.write(f"raycluster: {text}\n")
        self.stream.flush()

    def done(self) -> None:
        """Clear a line left on a terminal."""
        if self._shown and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
