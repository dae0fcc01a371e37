import json

from django.core.management.base import BaseCommand, CommandError

from lucent_bus import sync as bus_sync
from streams import topology


class Command(BaseCommand):
    help = "Provision (apply), compare (diff) or check (lint) the Lucent bus topology."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["apply", "diff", "lint"])
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args, action, json: bool = False, **options):
        try:
            result = bus_sync.with_own_client("topology", getattr(topology, action))
        except Exception as exc:
            raise CommandError(f"topology {action}: {type(exc).__name__}: {exc}") from exc
        getattr(self, f"show_{action}")(result, json)

    def emit(self, data) -> None:
        self.stdout.write(json.dumps(data, indent=2, default=str))

    def show_apply(self, changes, as_json):
        if as_json:
            return self.emit([c.__dict__ for c in changes])
        for c in changes:
            line = f"{c.stream:<20} {c.action}" + (f": {c.detail}" if c.detail else "")
            style = self.style.ERROR if c.action == "failed" else self.style.SUCCESS
            self.stdout.write(style(line))
            for w in c.warnings:
                self.stdout.write(self.style.WARNING(f"{'':<20} warning: {w}"))
        if any(c.action == "failed" for c in changes):
            raise CommandError("some streams could not be applied")

    def show_diff(self, diffs, as_json):
        if as_json:
            self.emit([d.__dict__ for d in diffs])
        else:
            for d in diffs:
                self.stdout.write(f"{d.stream:<20} {d.state}")
                for key, have, want in d.fields:
                    self.stdout.write(f"{'':<20} {key}: live {have!r}, declared {want!r}")
                for note in d.consumers:
                    self.stdout.write(f"{'':<20} {note}")
        if any(d.state in ("missing", "drift") for d in diffs):
            raise SystemExit(1)

    def show_lint(self, findings, as_json):
        if as_json:
            self.emit([f.as_dict() for f in findings])
        else:
            if not findings:
                self.stdout.write(self.style.SUCCESS("no problems found"))
            styles = {"error": self.style.ERROR, "warning": self.style.WARNING}
            for f in findings:
                style = styles.get(f.severity, str)
                self.stdout.write(style(f"{f.severity.upper():<8} {f.stream}: [{f.code}] {f.message}"))
                if f.fix:
                    self.stdout.write(f"{'':<9}fix: {f.fix}")
        if any(f.severity == "error" for f in findings):
            raise SystemExit(1)
