from django.apps import AppConfig


class KernelConfig(AppConfig):
    """The shared kernel: roles, audited actions and the audit, jobs, API paging and
    errors, helper processes, time parsing. Every app may import it; it imports none.

    Its label is still ``lucent_console``: the kernel's models (AuditRecord, Heartbeat,
    Lease, Job, Quarantined) and their migrations were the project package's before the
    layers were split, and the label keeps their tables, migration history and
    permissions as they are."""

    name = "kernel"
    label = "lucent_console"
    verbose_name = "Lucent Console"

    def ready(self) -> None:
        # Imported here: axes' signals and our handler's module load models, which need the
        # app registry ready.
        from axes.signals import user_locked_out

        from .signals import record_lockout

        user_locked_out.connect(record_lockout, dispatch_uid="lucent-lockout-audit")
