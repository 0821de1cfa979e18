"""The `metadata` setting: where ML Metadata lives (empty: SQLite in the pipeline home).

    metadata: ""                                          SQLite at HOME/metadata.sqlite (embedded)
    metadata: postgresql://USER@HOST:PORT/DB              a PostgreSQL server (port default 5432)
    metadata: postgresql://USER@HOST/DB?sslmode=require   with libpq's SSL options

The URL never holds a password: it is saved with every run's config, so a
password there would be written to disk. The password reaches libpq from the
environment (PGPASSWORD) or from a libpq password file (`metadata_password_file`,
PGPASSFILE or ~/.pgpass); see imgpipe/orchestration/metadata.py. Error
messages here name the part that is wrong and never repeat the URL's userinfo.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from trainer.config import ConfigError

SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = 5432
# libpq's SSL connection parameters that ML Metadata's PostgreSQL config carries.
SSL_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_NAME = re.compile(r"^[A-Za-z0-9_.$-]+$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]+\]$")


@dataclasses.dataclass(frozen=True)
class PostgresTarget:
    """A parsed `postgresql://` metadata URL (no password: it never has one)."""

    user: str
    host: str
    port: int
    dbname: str
    ssl: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        """The canonical URL, safe to log (it has no password)."""
        query = "&".join(f"{k}={v}" for k, v in self.ssl)
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}" + (
            f"?{query}" if query else ""
        )


def parse_metadata_url(url: str) -> PostgresTarget:
    """`postgresql://USER@HOST[:PORT]/DB[?sslmode=...]` -> PostgresTarget; ValueError naming the part.

    The message never contains the userinfo, so a mistyped password cannot leak through it.
    """
    text = url.strip()
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(
            "expected postgresql://USER@HOST:PORT/DB (or empty for SQLite in the pipeline home), "
            f"got a URL with scheme {scheme.lower() if sep else 'none'!r}"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(
            "the port must be a number from 1 to 65535 (postgresql://USER@HOST:PORT/DB)"
        ) from None
    if parts.password is not None:
        raise ValueError(
            "the URL must not contain a password (it is saved with each run's config); "
            "give it in PGPASSWORD or a libpq password file (metadata_password_file)"
        )
    if not parts.username:
        raise ValueError("the URL needs a user: postgresql://USER@HOST:PORT/DB")
    user = unquote(parts.username)
    host = parts.hostname or ""
    if "[" in parts.netloc.rpartition("@")[2] and host:
        host = f"[{host}]"
    if not host or not _HOST.match(host):
        raise ValueError("the URL needs a host name or IP address: postgresql://USER@HOST:PORT/DB")
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname or "/" in dbname:
        raise ValueError("the URL needs one database name after the host: postgresql://USER@HOST:PORT/DB")
    for what, value in (("user", user), ("database name", dbname)):
        if not _NAME.match(value):
            raise ValueError(f"the {what} may hold only letters, digits and _ . $ -")
    if parts.fragment:
        raise ValueError("the URL must not have a #fragment")
    ssl: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in SSL_OPTIONS:
            raise ValueError(f"unknown URL option {key!r}; known: {', '.join(SSL_OPTIONS)}")
        if key == "sslmode" and value not in SSL_MODES:
            raise ValueError(f"sslmode {value!r} is not one of {', '.join(SSL_MODES)}")
        if not value:
            raise ValueError(f"URL option {key} has no value")
        ssl[key] = value
    return PostgresTarget(
        user=user,
        host=host,
        port=port or DEFAULT_PORT,
        dbname=dbname,
        ssl=tuple((k, ssl[k]) for k in SSL_OPTIONS if k in ssl),
    )


def check_password_file(path: str, target: PostgresTarget) -> None:
    """Fail early, naming the file, where libpq would silently ignore it; never reads a password out.

    libpq skips a password file that is group- or world-readable, and one without a
    line for this host, port, database and user (fields may be `*`).
    """
    field = "metadata_password_file"
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{field}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{field}: {path} cannot be read ({type(e).__name__})") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{field}: {path} is not a file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{field}: {path} is readable by others (mode {stat.S_IMODE(mode):o}); libpq ignores such "
            f"a file: chmod 600 {path}"
        )
    wanted = (target.host.strip("[]"), str(target.port), target.dbname, target.user)
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _passfile_fields(line)
        if len(fields) >= 5 and all(f in ("*", w) for f, w in zip(fields[:4], wanted, strict=True)):
            return
    raise ConfigError(
        f"{field}: {path} has no line for {':'.join(wanted)} "
        "(lines are HOST:PORT:DATABASE:USER:PASSWORD, * matches any value)"
    )


def _passfile_fields(line: str) -> list[str]:
    """A password file line split at unescaped ':' (libpq's format; backslash escapes : and \\)."""
    fields, current, escaped = [], [], False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    return fields


def for_a_later_process(
    metadata: str, password_file: str, environ: Mapping[str, str], later: str, adopt: bool = True
) -> tuple[str, list[str]]:
    """(password file to save, warnings) for a config another process runs later (a scheduled
    run, an Airflow task), which does not see this shell's environment. Never reads a password
    out, never shows one.

    With no `metadata_password_file` configured: PGPASSFILE set here is adopted (`adopt`, made
    absolute) when it is a usable password file for this database (`check_password_file`), else
    warned about; a password in PGPASSWORD is always warned about (libpq prefers it to any file,
    so a file adopted beside it may not hold the password this shell connects with).
    """
    if not metadata or password_file:
        return password_file, []
    target = parse_metadata_url(metadata)
    warnings = []
    saved = ""
    passfile = environ.get("PGPASSFILE", "")
    if passfile:
        path = os.path.abspath(os.path.expanduser(passfile))
        try:
            check_password_file(path, target)
        except ConfigError as e:
            warnings.append(f"PGPASSFILE is not saved for {later}: {e}")
        else:
            if adopt:
                saved = path
            else:
                warnings.append(
                    f"PGPASSFILE ({path}) is this shell's: {later} does not see it; give "
                    "--metadata-password-file FILE with a file at that path where it runs"
                )
    if environ.get("PGPASSWORD"):
        warnings.append(
            f"metadata: a password is in PGPASSWORD, which {later} will not see (it starts without "
            "this shell's environment): put it in a libpq password file and give "
            "--metadata-password-file FILE (or ~/.pgpass of the user it runs as)"
        )
    return saved, warnings
