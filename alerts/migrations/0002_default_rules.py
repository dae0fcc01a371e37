from django.db import migrations


def install(apps, schema_editor):
    from alerts.defaults import install as install_rules

    install_rules(apps.get_model("alerts", "Rule"))


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_initial")]
    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
