"""``manage.py consumer pause|resume|reset|create|edit|delete|info|list STREAM [CONSUMER]``:
the same serializers, service layer and audit as the API, printing the API's rows."""

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from kernel.actions import ActionError
from kernel.serializers import check
from lucent_bus import jetstream as js
from streams import consumer_ops as ops
from streams.consumer_api import row
from streams.consumer_serializers import (
    ConsumerConfigSerializer,
    OwnOnlySerializer,
    PauseSerializer,
    ResetSerializer,
)

ACTIONS = {  # action -> (serializer, role)
    "pause": (PauseSerializer, "operator"), "resume": (OwnOnlySerializer, "operator"),
    "reset": (ResetSerializer, "admin"), "create": (ConsumerConfigSerializer, "admin"),
    "edit": (ConsumerConfigSerializer, "admin"), "delete": (OwnOnlySerializer, "admin"),
}


class Command(BaseCommand):
    help = "Operate a stream's consumers (pause, resume, reset, create, edit, delete) or read them."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=[*ACTIONS, "info", "list"])
        parser.add_argument("stream")
        parser.add_argument("consumer", nargs="?", help="(all but create and list)")
        parser.add_argument("--seconds", help="pause for this many seconds")
        parser.add_argument("--until", help="pause until this ISO time")
        parser.add_argument("--seq", help="reset: the next stream sequence to deliver")
        parser.add_argument("--time", help="reset: from the first message at or after this time")
        parser.add_argument("--recreate", action="store_true",
                            help="reset by deleting and recreating the durable (loses its ack state)")
        parser.add_argument("--config", help="create/edit: a config as JSON (NATS names, ns durations)")
        parser.add_argument("--dry-run", action="store_true", help="create/edit: only the preview")
        parser.add_argument("--confirm-own", action="store_true",
                            help="confirm changing one of the console's own consumers (admin)")
        parser.add_argument("--user", default="admin", help="who acts (audited); default admin")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, action, stream, consumer, **opts):
        try:
            if action == "list":
                self.emit([row(rec) for rec in ops.listing(stream)], opts)
                return
            if consumer is None and action != "create":
                raise CommandError(f"{action} needs a consumer name")
            if action == "info":
                rec = ops.info(stream, consumer)
                self.emit({**row(rec), "config": rec["config"]}, opts)
                return
            self.emit(self.act(action, stream, consumer, opts), opts)
        except ActionError as exc:
            raise CommandError(str(exc)) from exc
        except js.JetStreamError as exc:
            raise CommandError(f"the bus said: {exc}") from exc

    def act(self, action, stream, consumer, opts) -> dict:
        user = get_user_model().objects.filter(username=opts["user"]).first()
        if user is None:
            raise CommandError(f"no user {opts['user']!r} (use --user)")
        body = self.body(action, opts)
        serializer, role = ACTIONS[action]
        target = f"{stream}/{consumer or body.get('durable_name', '')}"
        data = check(serializer, body, user=user, action=f"consumer.{action}", target=target,
                     role=role)
        own = bool(data.get("confirm_own"))
        if action == "pause":
            return ops.pause(user, stream, consumer, data.get("until"), data.get("seconds"), own)
        if action == "resume":
            return ops.resume(user, stream, consumer, own)
        if action == "reset":
            return ops.reset(user, stream, consumer, data.get("seq"), data.get("time"),
                             bool(data.get("recreate")), own)
        if action == "create":
            return ops.create(user, stream, data)
        if action == "edit":
            return ops.edit(user, stream, consumer, data)
        return ops.delete(user, stream, consumer, own)

    def body(self, action, opts) -> dict:
        body: dict = {}
        if opts["config"]:
            try:
                body = json.loads(opts["config"])
            except ValueError as exc:
                raise CommandError(f"--config is not JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise CommandError("--config must be a JSON object")
        given = {"seconds": opts["seconds"], "until": opts["until"], "seq": opts["seq"],
                 "time": opts["time"], "recreate": opts["recreate"] or None,
                 "dry_run": opts["dry_run"] or None, "confirm_own": opts["confirm_own"] or None}
        allowed = {"pause": ("seconds", "until"), "reset": ("seq", "time", "recreate"),
                   "create": ("dry_run",), "edit": ("dry_run",)}.get(action, ())
        for key, value in given.items():
            if value is None:
                continue
            if key != "confirm_own" and key not in allowed:
                raise CommandError(f"{action} takes no --{key.replace('_', '-')}")
            body[key] = value
        return body

    def emit(self, result, opts) -> None:
        if opts["json"]:
            self.stdout.write(json.dumps(result, indent=2, default=str))
            return
        for item in result if isinstance(result, list) else [result]:
            if "num_pending" in item:
                item = {**item, "state": ops.pause_text(item)}
            self.stdout.write("  ".join(f"{k}={v}" for k, v in item.items() if k != "config"))
            if "config" in item:
                self.stdout.write(json.dumps(item["config"], indent=2, default=str))
