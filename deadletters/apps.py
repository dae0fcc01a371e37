from django.apps import AppConfig


class DeadLettersConfig(AppConfig):
    name = "deadletters"
    verbose_name = "Dead letters"

    def ready(self) -> None:
        # The kernel's job runner knows no app: the kinds this app runs are plugged in.
        from kernel import helper
        from kernel import jobs as runner

        from . import jobs, replay

        runner.register("replay", jobs.run_replay)
        runner.register("purge", jobs.run_purge)
        helper.register(replay.SHARD, replay.shard_handler)
