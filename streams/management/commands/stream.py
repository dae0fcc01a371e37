"""``manage.py stream create|edit|delete|info``: the stream editor from the shell.

The config is JSON with NATS JSON names (as the API takes it: ``--config '{...}'`` or
``--file F``, ``-`` for stdin), checked by the API's serializer and applied by
``streams.editor`` with the same audit; ``--dry-run`` shows the diff and the lint
findings without applying.
"""

import json
import sys

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from kernel.actions import ActionError
from kernel.serializers import check
from streams import editor
from streams.editor_serializers import StreamConfigSerializer, StreamDeleteSerializer


class Command(BaseCommand):
    help = "Create, edit, delete or show a stream (admin, audited; previews with --dry-run)."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["create", "edit", "delete", "info"])
        parser.add_argument("name", help="the stream")
        parser.add_argument("--config", help="the config (edit: the fields to change) as JSON")
        parser.add_argument("--file", help="read the config JSON from a file ('-': stdin)")
        parser.add_argument("--dry-run", action="store_true",
                            help="show the diff and the lint findings, apply nothing")
        parser.add_argument("--confirm-lint", action="store_true",
                            help="apply although the topology lint found errors")
        parser.add_argument("--confirm-declared", action="store_true",
                            help="apply although it moves a declared stream from its declaration")
        parser.add_argument("--confirm-own", action="store_true",
                            help="apply to one of the console's own streams")
        parser.add_argument("--user", default="admin", help="who acts (audited); default admin")
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args, action, name, **opts):
        try:
            result = self.act(action, name, opts)
        except ActionError as exc:
            raise CommandError(str(exc)) from exc
        if opts["json"]:
            self.stdout.write(json.dumps(result, indent=2, default=str))
        else:
            self.show(result)

    def act(self, action: str, name: str, opts: dict) -> dict:
        if action == "info":
            return editor.describe(name)
        user = get_user_model().objects.filter(username=opts["user"]).first()
        if user is None:
            raise CommandError(f"no user {opts['user']!r} (use --user)")
        controls = {"dry_run": opts["dry_run"], "confirm_declared": opts["confirm_declared"],
                    "confirm_own": opts["confirm_own"]}
        if action == "delete":
            data = check(StreamDeleteSerializer, controls, user=user, action="stream.delete",
                         target=name, role="admin")
            return editor.delete(user, name, data)
        body = self.body(opts)
        if action == "create":
            body.setdefault("name", name)
        body = {**body, **controls, "confirm_lint": opts["confirm_lint"]} \
            if isinstance(body, dict) else body
        context = {"create": True} if action == "create" else {"name": name}
        data = check(StreamConfigSerializer, body, user=user, action=f"stream.{action}",
                     target=name, role="admin", context=context)
        if action == "create":
            if data.get("name") != name:
                raise CommandError(f"the config names {data.get('name')!r}, not {name!r}")
            return editor.create(user, data)
        return editor.edit(user, name, data)

    def body(self, opts: dict):
        if opts["file"]:
            try:
                text = sys.stdin.read() if opts["file"] == "-" else open(opts["file"]).read()
            except OSError as exc:
                raise CommandError(f"cannot read {opts['file']}: {exc}") from exc
        else:
            text = opts["config"] or "{}"
        try:
            return json.loads(text)
        except ValueError as exc:
            raise CommandError(f"the config is not JSON: {exc}") from exc

    def show(self, result: dict) -> None:
        if "features" in result:  # info
            self.stdout.write(json.dumps(result["config"], indent=2))
            self.stdout.write(f"declared by the topology: {'yes' if result['declared'] else 'no'}")
            for key, declared, live in result["declared_drift"]:
                self.stdout.write(f"  differs: {key}: declared {declared!r}, live {live!r}")
            if result["own"]:
                self.stdout.write(f"the console's own stream: {result['own']}")
            return
        verb = {"create": "created", "edit": "edited", "delete": "deleted"}[result["action"]]
        state = verb if result["applied"] else "dry run, nothing applied"
        self.stdout.write(f"{result['stream']}: {state}")
        for key, old, new in result["diff"]:
            self.stdout.write(f"  {key}: {json.dumps(old)} -> {json.dumps(new)}")
        styles = {"error": self.style.ERROR, "warning": self.style.WARNING}
        for f in result["findings"]:
            self.stdout.write(styles.get(f["severity"], str)(
                f"  {f['severity'].upper():<8} [{f['code']}] {f['message']}"))
        if not result["applied"] and result["needs"]:
            self.stdout.write("  needs: " + ", ".join("--" + n.replace("_", "-")
                                                     for n in result["needs"]))
