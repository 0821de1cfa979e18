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
from urllib.parse import parse_qsl, unquote, urlsplit

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


def for_a_later_process(
    metadata: str, password_file: str, environ: dict[str, str], later: str
) -> tuple[str, str]:
    """(password file to save, warning or "") for a config that another process runs later (a
    scheduled run, an Airflow task), which does not inherit this shell's environment.

    PGPASSFILE set here and no password file configured: the file is saved with the config
    (absolute), since the later process would not see the variable. PGPASSWORD alone: a warning
    that the later process will not have it (a password is never written into a config).
    """
    if not metadata or password_file:
        return password_file, ""
    passfile = environ.get("PGPASSFILE", "")
    if passfile:
        return os.path.abspath(os.path.expanduser(passfile)), ""
    if environ.get("PGPASSWORD"):
        return "", (
            f"metadata: the password is in PGPASSWORD, which {later} will not see (it starts without "
            "this shell's environment): put it in a libpq password file and give "
            "--metadata-password-file FILE (or ~/.pgpass of the user the runs run as)"
        )
    return "", ""
