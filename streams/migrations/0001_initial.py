from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Sample",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kind", models.CharField(choices=[("s", "stream"), ("c", "consumer")], max_length=1)),
                ("key", models.CharField(max_length=300)),
                ("resolution", models.PositiveIntegerField()),
                ("at", models.DateTimeField()),
                ("messages", models.BigIntegerField(null=True)),
                ("bytes", models.BigIntegerField(null=True)),
                ("rate", models.FloatField(null=True)),
                ("pending", models.BigIntegerField(null=True)),
                ("ack_pending", models.BigIntegerField(null=True)),
                ("redelivered", models.BigIntegerField(null=True)),
            ],
            options={
                "indexes": [
                    models.Index(fields=["kind", "key", "resolution", "at"], name="streams_sam_kind_9f3341_idx"),
                    models.Index(fields=["resolution", "at"], name="streams_sam_resolut_4f2909_idx"),
                ],
            },
        ),
    ]
