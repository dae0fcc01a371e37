from django.db import migrations


def update(apps, schema_editor):
    """Give the default rules of an existing database their new durations, but only
    rows still exactly as installed (name, kind, threshold, old for_s): an operator's
    edit is theirs to keep. The values are written out here, not imported, so this
    migration means the same thing whatever defaults.py says later."""
    Rule = apps.get_model("alerts", "Rule")
    for name, kind, threshold, old_for_s, new_for_s in CHANGES:
        rows = Rule.objects.filter(name=name, kind=kind, for_s=old_for_s)
        rows = rows.filter(threshold__isnull=True) if threshold is None else rows.filter(
            threshold=threshold)
        rows.update(for_s=new_for_s)
    Rule.objects.filter(name="deadletters-rate", description=OLD_DL_DESCRIPTION).update(
        description=NEW_DL_DESCRIPTION)


# name, kind, threshold, old for_s, new for_s
CHANGES = [
    ("consumer-stalled", "consumer_stalled", None, 0, 30),
    ("deadletters-rate", "deadletter_rate", 10, 0, 120),
    ("stream-usage-80", "stream_usage", 80, 0, 60),
    ("stream-usage-95", "stream_usage", 95, 0, 30),
    ("interest-without-consumers", "interest_no_consumers", None, 0, 30),
    ("service-stale", "service_stale", None, 0, 15),
    ("service-down", "service_down", None, 0, 10),
]

OLD_DL_DESCRIPTION = "Dead letters arriving faster than `threshold` a minute."
NEW_DL_DESCRIPTION = ("Dead letters arriving faster than `threshold` a minute for `for_s` "
                      "seconds; resolves below half of it.")


class Migration(migrations.Migration):
    dependencies = [("alerts", "0004_notification_suppressed")]
    operations = [migrations.RunPython(update, migrations.RunPython.noop)]
