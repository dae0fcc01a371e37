"""Bus connection settings from the environment.

Secrets (password, token, nkey seed, creds path contents) live only in the
``BusConfig`` object and in the options handed to nats-py; ``describe()`` and
``redacted_servers`` are what may be shown in pages and logs.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured


def _redact_url(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username or parts.password:
        host = f"***@{host}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class BusConfig:
    servers: list[str]
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: str | None = field(default=None, repr=False)
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> BusConfig:
        env = os.environ if env is None else env
        raw = env.get("NATS_URL", "").strip()
        if not raw:
            raise ImproperlyConfigured(
                "NATS_URL is not set (manage.py up sets it to the embedded server)"
            )
        servers = [s.strip() for s in raw.split(",") if s.strip()]
        for server in servers:
            scheme = urlsplit(server if "://" in server else f"nats://{server}").scheme
            if scheme not in ("nats", "tls", "ws", "wss"):
                raise ImproperlyConfigured(
                    f"NATS_URL: unsupported scheme {scheme!r} in {_redact_url(server)}"
                )
        if bool(env.get("NATS_USER")) != bool(env.get("NATS_PASSWORD")):
            raise ImproperlyConfigured("NATS_USER and NATS_PASSWORD go together")
        if bool(env.get("NATS_TLS_CERT")) != bool(env.get("NATS_TLS_KEY")):
            raise ImproperlyConfigured("NATS_TLS_CERT and NATS_TLS_KEY go together")
        for name in ("NATS_CREDS", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"):
            path = env.get(name)
            if path and not os.path.isfile(path):
                raise ImproperlyConfigured(f"{name}: no such file {path!r}")
        return cls(
            servers=servers,
            user=env.get("NATS_USER") or None,
            password=env.get("NATS_PASSWORD") or None,
            token=env.get("NATS_TOKEN") or None,
            nkey_seed=env.get("NATS_NKEY_SEED") or None,
            creds=env.get("NATS_CREDS") or None,
            tls_ca=env.get("NATS_TLS_CA") or None,
            tls_cert=env.get("NATS_TLS_CERT") or None,
            tls_key=env.get("NATS_TLS_KEY") or None,
        )

    @property
    def redacted_servers(self) -> list[str]:
        return [_redact_url(s) for s in self.servers]

    def describe(self) -> dict:
        """What may be shown to users: servers without credentials, auth kind."""
        auth = "none"
        if self.creds:
            auth = "creds"
        elif self.nkey_seed:
            auth = "nkey"
        elif self.token:
            auth = "token"
        elif self.user or any("@" in urlsplit(s).netloc for s in self.servers):
            auth = "user/password"
        return {
            "servers": self.redacted_servers,
            "auth": auth,
            "tls": bool(self.tls_ca or self.tls_cert)
            or any(s.startswith("tls://") for s in self.servers),
        }

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx

    def connect_options(self) -> dict:
        opts: dict = {"servers": self.servers}
        if self.user:
            opts["user"] = self.user
            opts["password"] = self.password
        if self.token:
            opts["token"] = self.token
        if self.nkey_seed:
            opts["nkeys_seed_str"] = self.nkey_seed
        if self.creds:
            opts["user_credentials"] = self.creds
        tls = self.tls_context()
        if tls is not None:
            opts["tls"] = tls
        return opts
