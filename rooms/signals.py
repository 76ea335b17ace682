"""Model signals of the chat: name keys follow usernames; a deleted room leaves a tombstone
and no Redis keys (whichever way it was deleted: the admin, a queryset, a script)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from . import services
from .models import Room

logger = logging.getLogger("rooms.signals")


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def _user_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    services.name_keys_refresh(instance)


@receiver(post_delete, sender=Room)
def _room_deleted(sender: Any, instance: Room, **kwargs: Any) -> None:
    high = services.room_tombstone(instance)
    slug = instance.slug
    transaction.on_commit(lambda: services.room_forget_redis(slug, high))
