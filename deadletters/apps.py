from django.apps import AppConfig


class DeadLettersConfig(AppConfig):
    name = "deadletters"
    verbose_name = "Dead letters"

    def ready(self) -> None:
        # The kernel's job runner knows no app: the kinds this app runs are plugged in.
        from kernel import jobs as runner

        from . import jobs

        runner.register("replay", jobs.run_replay)
        runner.register("purge", jobs.run_purge)
