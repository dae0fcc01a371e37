from django.apps import AppConfig


class TracesConfig(AppConfig):
    name = "traces"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The kernel's helper processes know no app: the trace index's writer is plugged in.
        # Imported here: the writer's module needs the models, loaded only once apps are.
        from kernel import helper

        from .indexer import WRITER, writer_handler

        helper.register(WRITER, writer_handler)
