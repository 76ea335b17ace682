from django.apps import AppConfig


class ChatsiteConfig(AppConfig):
    """Holds the ``runnode`` command: where the cluster runtime meets the server."""

    name = "chatsite"

    def ready(self) -> None:
        from . import fail_closed  # noqa: F401  registers the deploy check
