"""``manage.py up``: the whole console in one process tree (see README.md)."""

import os
import secrets
import signal
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from lucent_bus import embedded, lease
from lucent_bus import sync as bus_sync
from lucent_bus.config import BusConfig
from lucent_console.supervisor import Child, Supervisor
from streams import topology

DEFAULT_NATS_PORT = 4322  # not 4222: a machine may already run NATS there


# plotly's package_data holds more than plotly.min.js: datasets, templates and a second
# 4.8 MB bundle (widgetbundle.js) that no page uses; they need neither hashing nor gzip.
STATIC_IGNORE = ["datasets", "templates", "widgetbundle.js", "*.py", "__pycache__"]


def collect_static() -> None:
    """Copy, hash and gzip the static files into STATIC_ROOT (the manifest storage needs it
    before any page renders). Quick when nothing changed: unchanged files are not copied
    again; hashing and gzip of the ~40 files left take about a second."""
    call_command("collectstatic", interactive=False, verbosity=0, ignore_patterns=STATIC_IGNORE)


class Command(BaseCommand):
    help = "Start the whole console (bus, web, collector, Celery, demo) until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--demo", action="store_true", help="also run the simulated services")
        parser.add_argument("--host", default=os.getenv("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.getenv("PORT", "8000")))

    def handle(self, *args, demo: bool, host: str, port: int, **options):
        self.sup = Supervisor(self.stdout)
        stop_requested = []

        def on_signal(signum, frame):
            stop_requested.append(signum)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        code = 0
        try:
            self.start_tree(demo, host, port, stop_requested)
            while not stop_requested:
                if not self.sup.check():
                    code = 1
                    break
                time.sleep(0.5)
        except CommandError as exc:
            self.sup.say(f"cannot start: {exc}")
            code = 1
        finally:
            self.sup.say("stopping...")
            self.sup.stop()
            self.sup.say("stopped")
        if code:
            sys.exit(code)

    # ------------------------------------------------------------------ start

    def start_tree(self, demo: bool, host: str, port: int, stop_requested: list) -> None:
        say = self.sup.say
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        if not os.environ.get("NATS_URL"):
            os.environ["NATS_URL"] = self.start_embedded_nats()
        config = BusConfig.from_env()
        say(f"bus: {', '.join(config.redacted_servers)}")

        call_command("migrate", interactive=False, verbosity=0)
        collect_static()
        login_hint = self.ensure_admin()

        self.apply_topology(stop_requested)
        if stop_requested:
            return
        self.start_children(demo, host, port)
        try:
            embedded.wait_listening(port, 30, host=self.local(host))
        except TimeoutError:
            raise CommandError(f"the web server did not start listening on {host}:{port}") from None
        self.sup.settle()
        self.stdout.write(self.style.SUCCESS(
            f"\n  Lucent Console is running at http://{self.local(host)}:{port}/\n"
            f"  {login_hint}\n  Stop it with Ctrl-C.\n"))

    def apply_topology(self, stop_requested: list) -> None:
        """Apply the topology and create the leader lease, waiting for the bus (every 2 s)
        until it answers or a stop is requested."""
        say = self.sup.say
        say("applying the topology...")
        changes = []
        while not stop_requested:
            try:
                changes = bus_sync.with_own_client("up", topology.apply)
                # The collectors' leader lease (they would create it themselves, later).
                bus_sync.with_own_client("up", lease.ensure_bucket, settings.LUCENT_LEADER_TTL)
                break
            except Exception as exc:
                say(f"bus not reachable yet ({type(exc).__name__}: {exc}); retrying in 2s")
                time.sleep(2)
        for c in changes:
            if c.action != "unchanged" or c.warnings:
                say(f"  {c.stream}: {c.action} {c.detail} {'; '.join(c.warnings)}".rstrip())

    def start_children(self, demo: bool, host: str, port: int) -> None:
        """Web server, collector, Celery worker and beat, and the demo if asked."""
        env = dict(os.environ)
        env.setdefault("DJANGO_SETTINGS_MODULE", "lucent_console.settings")
        env.setdefault("PYTHONUNBUFFERED", "1")
        if "DJANGO_ALLOWED_HOSTS" not in env:
            env["DJANGO_ALLOWED_HOSTS"] = ",".join(
                ["localhost", "127.0.0.1", "[::1]"]
                + (["*"] if host in ("0.0.0.0", "::") else [host]))
        py = sys.executable
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        self.sup.start(Child("web", [
            py, "-m", "uvicorn", "lucent_console.asgi:application", "--host", host,
            "--port", str(port), "--no-access-log", "--lifespan", "off", "--ws", "websockets-sansio",
            "--timeout-graceful-shutdown", "3"], env))
        self.sup.start(Child("collector", [py, manage, "collector"], env,
                             ready=r"is the leader|: standby"))
        celery = [py, "-m", "celery", "-A", "lucent_console", "--quiet"]
        # Celery warns at length when its worker runs as root (a container, a dev VM). Our
        # worker takes JSON only (no pickle), which is what the warning is about; silenced for
        # this child alone, by its exact start.
        worker_env = {**env, "PYTHONWARNINGS": ",".join(filter(None, [
            env.get("PYTHONWARNINGS"), "ignore:You're running the worker with superuser privileges"]))}
        self.sup.start(Child("worker", celery + [
            "worker", "--pool", "threads", "--concurrency", "4", "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat"], worker_env,
            # kombu's filesystem transport has no host; it says so once per connection.
            mute=("No hostname was supplied. Reverting to default 'localhost'",)))
        self.sup.start(Child("beat", celery + [
            "beat", "--loglevel", "WARNING",
            "--schedule", str(settings.VAR_DIR / "celerybeat-schedule")], env))
        if demo:
            self.sup.start(Child("demo", [py, manage, "demo"], env, ready=r"^demo: "))

    @staticmethod
    def local(host: str) -> str:
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    def start_embedded_nats(self) -> str:
        store = settings.VAR_DIR / "nats"
        port = embedded.free_port(int(os.getenv("LUCENT_NATS_PORT", DEFAULT_NATS_PORT)))
        monitor_port = embedded.free_port()  # the servers and connections pages read it
        args = embedded.server_args(port, store, monitor_port=monitor_port)
        child = Child("nats", args, echo=False, infrastructure=True)
        self.sup.start(child)
        try:
            embedded.wait_listening(port, 20, proc=child.proc)
        except (TimeoutError, RuntimeError) as exc:
            raise CommandError(f"embedded nats-server: {exc}; {' | '.join(child.tail)}") from exc
        self.sup.say(f"embedded nats-server on port {port}, store {store}")
        os.environ.setdefault("LUCENT_NATS_MONITOR_URLS", f"http://127.0.0.1:{monitor_port}")
        return f"nats://127.0.0.1:{port}"

    def ensure_admin(self) -> str:
        User = get_user_model()
        existing = User.objects.filter(username="admin").first()
        if existing is not None:
            return ("Log in as admin with the password printed at first run or "
                    "LUCENT_ADMIN_PASSWORD (reset: python manage.py changepassword admin).")
        password = os.getenv("LUCENT_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user = User.objects.create_superuser("admin", "", password)
        user.groups.add(Group.objects.get(name="admin"))
        if os.getenv("LUCENT_ADMIN_PASSWORD"):
            return "Log in as admin with the password in LUCENT_ADMIN_PASSWORD."
        return f"Log in as admin with password {password}  (shown once; change it after login)"
