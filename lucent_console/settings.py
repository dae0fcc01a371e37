"""One settings module, configured from the environment (see README.md).

Defaults run on a laptop: SQLite and the secret key under var/, in-memory
channel layer, Celery on kombu's filesystem transport, embedded nats-server
(started by ``manage.py up``, which sets NATS_URL for its children).
"""

import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.getenv("LUCENT_VAR_DIR", BASE_DIR / "var")).resolve()


def envbool(name: str, default: str) -> bool:
    value = os.getenv(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false)")


def envint(name: str, default: str) -> int:
    value = os.getenv(name, default)
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


def _secret_key() -> str:
    if os.getenv("DJANGO_SECRET_KEY"):
        return os.environ["DJANGO_SECRET_KEY"]
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = envbool("DJANGO_DEBUG", "0")
ALLOWED_HOSTS = [
    h.strip()
    for h in os.getenv("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.getenv("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]
# Served over HTTPS (by a proxy: run uvicorn with --forwarded-allow-ips set to it, so
# that requests it forwarded as https are secure): secure cookies, HSTS, redirects.
# `manage.py check --deploy` is clean with DJANGO_DEBUG=0, a secret key and this.
LUCENT_HTTPS = envbool("LUCENT_HTTPS", "0")
if LUCENT_HTTPS:
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]  # probes and scrapers inside
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envint("LUCENT_HSTS_SECONDS", "31536000")
    SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_PRELOAD = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "kernel",
    "lucent_console",
    "streams",
    "deadletters",
    "agents",
    "traces",
    "alerts",
    "kv",
    "servers",
    "publish",
    "axes",  # login lockout (see AXES_* below)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "kernel.middleware.ConsoleCSPMiddleware",  # CONTENT_SECURITY_POLICY below
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "kernel.middleware.RoleRequiredMiddleware",  # after login: no group, no pages
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as axes asks: turns a lockout into its page
]

ROOT_URLCONF = "lucent_console.urls"
ASGI_APPLICATION = "lucent_console.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "lucent_console.context_processors.console",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.getenv("DATABASE_URL", f"sqlite:///{VAR_DIR / 'console.sqlite3'}"),
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", "0"),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, collector and Celery write concurrently: WAL and a busy timeout.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests too use a file, not SQLite's shared in-memory database: there, a thread
    # (the collector's, in tests) that meets another's write fails at once ("table is
    # locked") instead of waiting for the busy timeout. One file per test run (pid), so
    # that two runs at once on one machine do not share, and break, one database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-console-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

# Login guessing (django-axes): 10 failed logins lock out the pair (username, address)
# and the address (the same limit for both, so in effect the address: rotating
# usernames does not help a guesser). Never the username alone, so nobody can lock
# `admin` out from another address. Failures count until
# LUCENT_LOGIN_LOCKOUT_MINUTES have passed since the last one; attempts while locked out
# count too (a guesser who keeps going stays locked). Kept in the database (shared by
# the web processes); `manage.py axes_reset_username NAME` / `axes_reset_ip IP` lift it.
# The address is REMOTE_ADDR: behind the proxy uvicorn sets it from X-Forwarded-For of
# FORWARDED_ALLOW_IPS only (django-ipware, which would read the header itself, is not
# installed).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses before the password is checked
    "django.contrib.auth.backends.ModelBackend",
]
LUCENT_LOGIN_LOCKOUT_MINUTES = envint("LUCENT_LOGIN_LOCKOUT_MINUTES", "15")
if LUCENT_LOGIN_LOCKOUT_MINUTES < 1:
    raise ImproperlyConfigured("LUCENT_LOGIN_LOCKOUT_MINUTES must be at least 1 (minutes)")
AXES_FAILURE_LIMIT = 10
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
AXES_COOLOFF_TIME = timedelta(minutes=LUCENT_LOGIN_LOCKOUT_MINUTES)
AXES_RESET_ON_SUCCESS = False  # a guesser's own good login must not clear the address's count
AXES_LOCKOUT_CALLABLE = "kernel.auth.lockout_response"
AXES_VERBOSE = False  # not its banner in the output of every process `manage.py up` starts

# Bad API tokens (kernel.auth.ThrottledTokenAuthentication): this many from one
# address within the window and the address gets 429 for the rest of it.
LUCENT_TOKEN_FAILURES = envint("LUCENT_TOKEN_FAILURES", "20")
LUCENT_TOKEN_FAILURE_WINDOW_S = envint("LUCENT_TOKEN_FAILURE_WINDOW_S", "60")

# Content-Security-Policy (django-csp; ConsoleCSPMiddleware adds ws:// and wss:// to this
# host to connect-src, for /ws/live/). No inline scripts anywhere: htmx and the charts
# are files, chart data is JSON in <script type="application/json">, htmx's eval is off
# (htmx-config in base.html). Inline styles stay allowed: plotly.js sets style
# attributes and injects <style> rules as it draws, and templates use a few.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "connect-src": [SELF],
        "img-src": [SELF, "data:"],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
        "base-uri": [SELF],
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns when it is missing
STATICFILES_DIRS = [
    BASE_DIR / "static",
    # plotly.js as shipped by the pinned plotly package (no CDN)
    ("plotly", Path(__import__("plotly").__file__).parent / "package_data"),
]
# Collected (`manage.py up` runs collectstatic; tests too, tests/conftest.py) under
# content-hashed names and gzipped: whitenoise serves them compressed and marks hashed
# names immutable (cached for a year), so plotly.min.js (4.6 MB, 1.4 MB gzipped) crosses
# the wire once per release instead of on every chart page (it was max-age=60, raw).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
WHITENOISE_KEEP_ONLY_HASHED_FILES = True  # half the files to compress, nothing unhashed served
# With DEBUG, {% static %} gives unhashed names: served from the finders, re-read on change.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

REDIS_URL = os.getenv("REDIS_URL", "")
# The cache counts bad API tokens per address (kernel.auth): with several web
# processes it must be shared, so Redis when there is one; one process needs no more.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": REDIS_URL, "KEY_PREFIX": "lucent"}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "lucentfs://"  # kombu's filesystem transport, made safe: lucent_console/broker.py
    _queue = VAR_DIR / "celery"
    for _sub in ("queue", "processed"):
        (_queue / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue / "queue"),
        "data_folder_out": str(_queue / "queue"),
        "processed_folder": str(_queue / "processed"),
        # kombu's default is "control" under the working directory (it once landed in the repo).
        "control_folder": str(_queue / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    "record-heartbeat": {"task": "kernel.tasks.beat_heartbeat", "schedule": 30.0},
    "sample-history": {"task": "streams.tasks.sample_history", "schedule": 10.0},
    "rollup-history": {"task": "streams.tasks.rollup_history", "schedule": 60.0},
    "prune-traces": {"task": "traces.tasks.prune_traces", "schedule": 3600.0},
    # Jobs whose runner died (lease run out) or that no worker took are queued again.
    "resume-jobs": {"task": "lucent.jobs.resume", "schedule": 5.0},
    # Webhook notifications whose task was lost (broker away, worker killed) are queued again.
    "resume-notifications": {"task": "alerts.tasks.resume_notifications", "schedule": 15.0},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "kernel.auth.ThrottledTokenAuthentication",  # 429 after many bad tokens
    ],
    # A logged-in user in no group reads nothing; actions check more in the service layer.
    "DEFAULT_PERMISSION_CLASSES": ["kernel.roles.IsViewer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # ActionError from any view (bad input, refused, not found) answers {"error", "fields"?}.
    "EXCEPTION_HANDLER": "kernel.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Lucent Console API",
    "VERSION": "1",
    "SERVE_PERMISSIONS": ["kernel.roles.IsViewer"],
    # Schema completeness is not a deployment setting: `manage.py spectacular --validate`
    # reports it; `check --deploy` stays about the deployment.
    "ENABLE_DJANGO_DEPLOY_CHECK": False,
    # Request bodies are their own components (strict: no field beyond those listed).
    "COMPONENT_SPLIT_REQUEST": True,
    # Views owned by modules that do not describe themselves yet (kernel/api.py).
    "PREPROCESSING_HOOKS": ["kernel.api.schema_hook"],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "kernel.api.strict_requests_hook"],
}

LUCENT_METRICS_TOKEN = os.getenv("LUCENT_METRICS_TOKEN", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.getenv("LUCENT_LOG_LEVEL", "INFO")},
    "loggers": {"nats": {"level": "WARNING"}, "celery": {"level": "WARNING"}},
}

# Seconds between two sweeps of the bus by the collector.
LUCENT_SWEEP_INTERVAL = float(os.getenv("LUCENT_SWEEP_INTERVAL", "1.0"))
if LUCENT_SWEEP_INTERVAL <= 0:
    raise ImproperlyConfigured("LUCENT_SWEEP_INTERVAL must be > 0")

# Seconds a collector's leader lease lasts without renewal (lucent_console.leader): a
# standby takes over this long after the leader dies. The same on every machine.
LUCENT_LEADER_TTL = float(os.getenv("LUCENT_LEADER_TTL", "5"))
if not 1 <= LUCENT_LEADER_TTL <= 300:
    raise ImproperlyConfigured("LUCENT_LEADER_TTL must be between 1 and 300 seconds")

# Days of envelope metadata the correlation trace keeps (traces.indexer.prune).
LUCENT_TRACE_DAYS = envint("LUCENT_TRACE_DAYS", "7")
if LUCENT_TRACE_DAYS < 1:
    raise ImproperlyConfigured(f"LUCENT_TRACE_DAYS={LUCENT_TRACE_DAYS} must be at least 1 (days)")

# First wait before a failed webhook notification is retried (then doubled, up to 60 s).
try:
    LUCENT_WEBHOOK_BACKOFF_S = float(os.getenv("LUCENT_WEBHOOK_BACKOFF_S", "2"))
except ValueError:
    raise ImproperlyConfigured("LUCENT_WEBHOOK_BACKOFF_S must be a number of seconds") from None

# Run dead-letter jobs in the request instead of Celery (tests; a one-process setup).
LUCENT_JOBS_INLINE = envbool("LUCENT_JOBS_INLINE", "0")

# Seconds a job runner's lease lasts unrenewed: how soon a job whose worker died is
# resumed by another (beat looks every 5 s). Renewed every third of it.
LUCENT_JOB_LEASE_S = envint("LUCENT_JOB_LEASE_S", "10")
if LUCENT_JOB_LEASE_S < 2:
    raise ImproperlyConfigured(f"LUCENT_JOB_LEASE_S={LUCENT_JOB_LEASE_S} must be at least 2 (seconds)")

# Bounds on what the bus can make the console hold or send (issue 12). Anyone on the bus
# can publish heartbeats and messages: these keep memory, pages and notifications finite.
# Seconds after which a silent service instance is forgotten (no "resolved" notification).
LUCENT_SERVICE_FORGET_S = envint("LUCENT_SERVICE_FORGET_S", str(24 * 3600))
# Service instances tracked at most; beyond, new ones are counted and shown as one line.
LUCENT_SERVICE_MAX = envint("LUCENT_SERVICE_MAX", "1000")
# More firing subjects of one rule than this make one grouped alert for the rule.
LUCENT_ALERT_GROUP_AT = envint("LUCENT_ALERT_GROUP_AT", "20")
# Alert transitions notified per rule per minute; the rest are counted as suppressed.
LUCENT_NOTIFY_PER_RULE_PER_MIN = envint("LUCENT_NOTIFY_PER_RULE_PER_MIN", "10")
# Message browser: bytes of each payload shown in a list, bytes of bodies on one page,
# messages on one page, bytes shown of a single message (the raw download is whole).
LUCENT_BROWSE_PREVIEW_BYTES = envint("LUCENT_BROWSE_PREVIEW_BYTES", "4096")
LUCENT_BROWSE_PAGE_BYTES = envint("LUCENT_BROWSE_PAGE_BYTES", str(256 * 1024))
LUCENT_BROWSE_MAX_COUNT = envint("LUCENT_BROWSE_MAX_COUNT", "50")
LUCENT_MESSAGE_VIEW_BYTES = envint("LUCENT_MESSAGE_VIEW_BYTES", str(1024 * 1024))
for _name in ("LUCENT_SERVICE_FORGET_S", "LUCENT_SERVICE_MAX", "LUCENT_ALERT_GROUP_AT",
              "LUCENT_NOTIFY_PER_RULE_PER_MIN", "LUCENT_BROWSE_PREVIEW_BYTES",
              "LUCENT_BROWSE_PAGE_BYTES", "LUCENT_BROWSE_MAX_COUNT", "LUCENT_MESSAGE_VIEW_BYTES"):
    if globals()[_name] < 1:
        raise ImproperlyConfigured(f"{_name}={globals()[_name]} must be at least 1")
