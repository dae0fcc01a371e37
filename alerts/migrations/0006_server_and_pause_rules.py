from django.db import migrations, models

# The rules issue 15 adds, written out here (not imported from defaults.py) so this
# migration means the same thing whatever defaults.py says later.
# name, kind, threshold, for_s, severity, description
RULES = [
    ("slow-consumers", "slow_consumers", 0, 30, "warning",
     "A server counted more than `threshold` new slow consumers in the last 5 minutes "
     "(clients that could not keep up: the server dropped their messages or them)."),
    ("server-js-limit-90", "server_js_limit", 90, 60, "critical",
     "A server's JetStream memory or storage use at `threshold`% of its max_memory or "
     "max_storage; resolves 5 points below."),
    ("consumer-pause-ending", "consumer_pause", 60, 10, "warning",
     "A paused consumer resumes within `threshold` seconds, or resumed with a backlog that "
     "grew during the pause (held until it is back to where it was when paused)."),
]
KINDS = [(k, k.replace("_", " ")) for k in (
    "consumer_pending", "consumer_stalled", "ack_pending_near_max", "deadletter_rate",
    "stream_usage", "interest_no_consumers", "replica", "agent", "service_stale",
    "service_down", "bus", "slow_consumers", "server_js_limit", "consumer_pause")]


def install(apps, schema_editor):
    Rule = apps.get_model("alerts", "Rule")
    for name, kind, threshold, for_s, severity, description in RULES:
        Rule.objects.get_or_create(name=name, defaults={
            "kind": kind, "threshold": threshold, "for_s": for_s, "severity": severity,
            "description": description})


def remove(apps, schema_editor):
    Rule = apps.get_model("alerts", "Rule")
    Rule.objects.filter(name__in=[r[0] for r in RULES], kind__in=[r[1] for r in RULES]).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0005_default_rule_durations")]
    operations = [
        migrations.AlterField("rule", "kind", models.CharField(max_length=32, choices=KINDS)),
        migrations.AlterField("rule", "target", models.CharField(
            max_length=300, default="*",
            help_text="glob on the stream, STREAM/consumer, agent, service or server")),
        migrations.RunPython(install, remove),
    ]
