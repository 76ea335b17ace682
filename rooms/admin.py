"""Rooms in the Django admin: people online and events kept come from Redis, in one batch per
page (never one Redis call per row)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest

from . import redis_admin, services
from .models import Room


class ArchivedFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "Active"), ("archived", "Archived")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Room]) -> QuerySet[Room]:
        if self.value() == "active":
            return queryset.filter(archived_at__isnull=True)
        if self.value() == "archived":
            return queryset.filter(archived_at__isnull=False)
        return queryset


class RoomChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        slugs = [room.slug for room in self.result_list]
        try:
            stats = redis_admin.room_stats(slugs)
        except Exception:
            stats = {}
        for room in self.result_list:
            room.redis_stats = stats.get(room.slug)


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["slug", "name", "created_at", "created_by", "online", "messages", "archived"]
    list_filter = [ArchivedFilter, "created_at"]
    search_fields = ["slug", "name", "topic"]
    readonly_fields = ["created_at", "seq_high_water"]
    actions = ["archive_rooms", "unarchive_rooms", "purge_history", "move_rooms"]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[RoomChangeList]:
        return RoomChangeList

    @admin.display(description="people online")
    def online(self, room: Room) -> str:
        stats = getattr(room, "redis_stats", None)
        return str(len(stats.online)) if stats is not None else "–"

    @admin.display(description="messages kept")
    def messages(self, room: Room) -> str:
        stats = getattr(room, "redis_stats", None)
        return str(stats.messages) if stats is not None else "–"

    @admin.display(boolean=True, description="archived")
    def archived(self, room: Room) -> bool:
        return room.archived

    @admin.action(description="Archive: refuse new messages, hide from the room list")
    def archive_rooms(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        for room in queryset:
            services.room_archive(room)
        self.message_user(request, f"Archived {queryset.count()} room(s).", messages.SUCCESS)

    @admin.action(description="Unarchive")
    def unarchive_rooms(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        for room in queryset:
            services.room_unarchive(room)
        self.message_user(request, f"Unarchived {queryset.count()} room(s).", messages.SUCCESS)

    @admin.action(description="Purge history (seqs are never reused)")
    def purge_history(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        for room in queryset:
            services.room_purge_history(room)
        self.message_user(request, f"Purged {queryset.count()} room(s).", messages.SUCCESS)

    @admin.action(description="Move to another node (hand-off, no lost messages)")
    def move_rooms(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        for room in queryset:
            redis_admin.room_move(room.slug)
        self.message_user(
            request, f"Asked the owners of {queryset.count()} room(s) to hand them off.",
            messages.SUCCESS,
        )  # fmt: skip
