from django.apps import AppConfig


class StreamsConfig(AppConfig):
    name = "streams"

    def ready(self) -> None:
        # The kernel's job runner knows no app: the kinds this app runs are plugged in.
        from kernel import jobs as runner

        from .replay import run_stream_replay

        runner.register("stream_replay", run_stream_replay)
