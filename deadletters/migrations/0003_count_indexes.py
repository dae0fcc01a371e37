"""Indexes for counting (issue 14): each filter's index ends with status, so that a
count, which leaves purged letters out, reads the index alone; the single-column indexes
they replace are dropped. PostgreSQL gets one more, on ``subject COLLATE "C"``: a
wildcard subject is a range of byte-ordered subjects (search.py), whatever the
database's collation.

No column is added, so there is nothing to backfill: on a table of a million rows this
migration builds six indexes (about 10-30 s on SQLite) and copies nothing. The
db_index changes are state only (an AlterField on SQLite would copy the whole table);
the old indexes are dropped by name (IF EXISTS: a database may never have had one).
"""

from django.db import migrations, models

FIELDS = ["stream", "subject", "consumer", "reason", "correlation_id", "message_type"]
TABLE = "streams_deadletter"
PG_SUBJECT_INDEX = "dl_subject_c"


def _old_index_names(schema_editor) -> list[str]:
    names = []
    for column in FIELDS:
        name = schema_editor._create_index_name(TABLE, [column], suffix="")
        names += [name, name + "_like"]  # PostgreSQL's varchar_pattern_ops twin
    return names


def drop_single_column_indexes(apps, schema_editor):
    for name in _old_index_names(schema_editor):
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def create_single_column_indexes(apps, schema_editor):
    for column in FIELDS:
        name = schema_editor._create_index_name(TABLE, [column], suffix="")
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {schema_editor.quote_name(name)} "
                              f"ON {TABLE} ({schema_editor.quote_name(column)})")


def create_pg_subject_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f'CREATE INDEX IF NOT EXISTS {PG_SUBJECT_INDEX} ON {TABLE} '
                              f'((subject COLLATE "C"), status)')


def drop_pg_subject_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {PG_SUBJECT_INDEX}")


def _state(name: str, **kwargs):
    return migrations.AlterField(model_name="deadletter", name=name,
                                 field=models.CharField(**kwargs))


class Migration(migrations.Migration):

    dependencies = [
        ("deadletters", "0002_replay_edit"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="deadletter", name="streams_dea_stream_b5f3e7_idx"),
        migrations.RemoveIndex(model_name="deadletter", name="streams_dea_correla_e07d8a_idx"),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(drop_single_column_indexes,
                                                      create_single_column_indexes)],
            state_operations=[
                _state("consumer", max_length=256),
                _state("correlation_id", blank=True, max_length=256),
                _state("message_type", blank=True, max_length=256),
                _state("reason", max_length=64),
                _state("stream", max_length=256),
                _state("subject", max_length=512),
            ],
        ),
        migrations.AddIndex(
            model_name="deadletter",
            index=models.Index(fields=["stream", "consumer", "-captured_at", "-dl_seq", "status"],
                               name="dl_stream_consumer_at"),
        ),
        migrations.AddIndex(
            model_name="deadletter",
            index=models.Index(fields=["consumer", "-captured_at", "-dl_seq", "status"],
                               name="dl_consumer_at"),
        ),
        migrations.AddIndex(
            model_name="deadletter",
            index=models.Index(fields=["subject", "-captured_at", "-dl_seq", "status"],
                               name="dl_subject_at"),
        ),
        migrations.AddIndex(
            model_name="deadletter",
            index=models.Index(fields=["reason", "-captured_at", "-dl_seq", "status"],
                               name="dl_reason_at"),
        ),
        migrations.AddIndex(
            model_name="deadletter",
            index=models.Index(fields=["message_type", "-captured_at", "-dl_seq", "status"],
                               name="dl_type_at"),
        ),
        migrations.AddIndex(
            model_name="deadletter",
            index=models.Index(fields=["correlation_id", "-captured_at", "-dl_seq", "status"],
                               name="dl_correlation_at"),
        ),
        migrations.RunPython(create_pg_subject_index, drop_pg_subject_index),
    ]
