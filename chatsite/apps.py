from django.apps import AppConfig


class ChatsiteConfig(AppConfig):
    """Holds the ``runnode`` command: where the cluster runtime meets the server."""

    name = "chatsite"
