from django.apps import AppConfig


class LucentConsoleConfig(AppConfig):
    name = "lucent_console"
    verbose_name = "Lucent Console"

    def ready(self) -> None:
        from axes.signals import user_locked_out

        from .signals import record_lockout

        user_locked_out.connect(record_lockout, dispatch_uid="lucent-lockout-audit")
