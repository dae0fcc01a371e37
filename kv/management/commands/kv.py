"""``manage.py kv ls|keys|get|history|put|del``: the rows of the API, from the same
service layer (kv/buckets.py), audited like the web for put and del."""

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from kernel.actions import ActionError
from kernel.serializers import check
from kv import buckets
from kv.api import BUCKET_KEYS, KEY_KEYS, REVISION_KEYS
from kv.serializers import KvDeleteSerializer, KvPutSerializer


class Command(BaseCommand):
    help = ("Key-value buckets: list them, their keys, a key's value and history; put, delete, "
            "purge (a key's whole history, admin).")

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["ls", "keys", "get", "history", "put", "del",
                                                       "purge"])
        parser.add_argument("bucket", nargs="?")
        parser.add_argument("key", nargs="?")
        parser.add_argument("value", nargs="?", help="put: the value (text, or base64 with --base64)")
        parser.add_argument("--filter", default="", help="keys: a pattern (a.*, a.>) or a substring")
        parser.add_argument("--limit", type=int, default=100)
        parser.add_argument("--offset", type=int, default=0)
        parser.add_argument("--base64", action="store_true", help="put: the value is base64")
        parser.add_argument("--revision", type=int, default=None,
                            help="put: only if this is still the key's latest revision "
                                 "(0: only if the key was never written)")
        parser.add_argument("--confirm-own", action="store_true",
                            help="an admin confirming a change to the console's own bucket")
        parser.add_argument("--user", default="admin", help="who acts (audited); default admin")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, action, **opts):
        needs = {"ls": 0, "keys": 1, "get": 2, "history": 2, "put": 3, "del": 2, "purge": 2}[action]
        given = [opts[n] for n in ("bucket", "key", "value")][:needs]
        if any(v is None for v in given):
            raise CommandError(f"kv {action} needs: " + " ".join(["BUCKET", "KEY", "VALUE"][:needs]))
        try:
            getattr(self, "do_" + {"del": "delete"}.get(action, action))(opts)
        except ActionError as exc:
            raise CommandError(str(exc)) from exc

    def out(self, rows: list[dict], keys: tuple, opts: dict, extra: dict | None = None) -> None:
        rows = [{k: r.get(k) for k in keys} for r in rows]
        if opts["json"]:
            self.stdout.write(json.dumps({**(extra or {}), "results": rows} if extra else rows,
                                         indent=2))
            return
        self.stdout.write("\t".join(keys))
        for r in rows:
            self.stdout.write("\t".join("" if r[k] is None else str(r[k]) for k in keys))
        for name, value in (extra or {}).items():
            self.stdout.write(f"{name}: {value}")

    def do_ls(self, opts):
        self.out(buckets.buckets(), BUCKET_KEYS, opts)

    def do_keys(self, opts):
        page = buckets.keys_page(opts["bucket"], opts["filter"], max(0, opts["offset"]),
                                 min(max(1, opts["limit"]), 1000))
        self.out(page["rows"], KEY_KEYS, opts, {"count": page["count"]})

    def do_get(self, opts):
        found = buckets.entry(opts["bucket"], opts["key"])
        row = {"bucket": opts["bucket"], "key": opts["key"], **{k: found[k] for k in REVISION_KEYS}}
        if opts["json"]:
            self.stdout.write(json.dumps(row, indent=2))
        elif found["value"] is None:
            self.stdout.write(f"{opts['key']} is deleted ({found['operation']}, revision "
                              f"{found['revision']})")
        else:
            self.stdout.write(found["display"])

    def do_history(self, opts):
        self.out(buckets.entry(opts["bucket"], opts["key"])["history"], REVISION_KEYS, opts)

    def user(self, name: str):
        user = get_user_model().objects.filter(username=name).first()
        if user is None:
            raise CommandError(f"no user {name!r} (use --user)")
        return user

    def do_put(self, opts):
        user = self.user(opts["user"])
        body = {"value": opts["value"], "encoding": "base64" if opts["base64"] else None,
                "confirm_own": opts["confirm_own"] or None, "revision": opts["revision"]}
        data = check(KvPutSerializer, body, user=user, action="kv.put",
                     target=f"{opts['bucket']}/{opts['key']}", role="operator")
        done = buckets.put(user, opts["bucket"], opts["key"], data["value"], data.get("encoding"),
                           bool(data.get("confirm_own")), data.get("revision"))
        self.out([done], ("bucket", "key", "revision", "operation"), opts)

    def do_delete(self, opts, purge: bool = False):
        user = self.user(opts["user"])
        data = check(KvDeleteSerializer, {"confirm_own": opts["confirm_own"] or None}, user=user,
                     action="kv.purge" if purge else "kv.delete",
                     target=f"{opts['bucket']}/{opts['key']}", role="admin" if purge else "operator")
        done = buckets.delete(user, opts["bucket"], opts["key"], bool(data.get("confirm_own")),
                              purge)
        self.out([done], ("bucket", "key", "revision", "operation"), opts)

    def do_purge(self, opts):
        self.do_delete(opts, purge=True)
