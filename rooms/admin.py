"""Rooms in the Django admin: people online and events kept come from Redis, in one batch per
page (never one Redis call per row)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from cluster.errors import CommandError

from . import bots, posting, redis_admin, services
from .models import BotToken, Message, ModerationLog, Room
from .protocol import MAX_FRAME_CHARS


class ReadOnlyRows:
    """An admin whose rows nobody adds, changes or deletes by hand (records, the archive)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SetOrNotFilter(admin.SimpleListFilter):
    """Filters on whether a nullable timestamp is set (a room's ``archived_at``, a message's
    ``deleted``): ``options`` is (value and label when unset, value and label when set)."""

    field = ""
    options: tuple[tuple[str, str], tuple[str, str]] = (("", ""), ("", ""))

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(self.options)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        (unset, _), (is_set, _) = self.options
        if self.value() in (unset, is_set):
            return queryset.filter(**{f"{self.field}__isnull": self.value() == unset})
        return queryset


class ArchivedFilter(SetOrNotFilter):
    title = "status"
    parameter_name = "status"
    field = "archived_at"
    options = (("active", "Active"), ("archived", "Archived"))


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
    list_display = [
        "slug", "name", "created_at", "created_by", "online", "messages", "archived",
        "history",
    ]  # fmt: skip
    list_filter = [ArchivedFilter, "created_at"]
    search_fields = ["slug", "name", "topic"]
    readonly_fields = ["created_at", "seq_high_water"]
    actions = ["archive_rooms", "unarchive_rooms", "purge_history", "move_rooms"]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[RoomChangeList]:
        return RoomChangeList

    @admin.display(description="archived messages")
    def history(self, room: Room) -> str:
        url = reverse("admin:rooms_message_changelist") + f"?room__id__exact={room.pk}"
        return format_html('<a href="{}">read</a>', url)

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

    # Moderation is a permission, not staff status: each action names the one it needs, and
    # the admin neither offers nor runs it for anyone without it.
    def has_moderate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("rooms.moderate_room")

    def has_purge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("rooms.purge_history")

    def has_move_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("rooms.move_room")

    def _confirmed(
        self, request: HttpRequest, queryset: QuerySet[Room], action: str, what: str
    ) -> TemplateResponse | None:
        """None once the user confirmed (``post=yes``); else the confirmation page, as
        ``delete_selected`` has."""
        if request.POST.get("post") == "yes":
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Are you sure?",
            "opts": self.model._meta,
            "queryset": queryset,
            "action": action,
            "what": what,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/rooms/room/action_confirmation.html", context)

    @admin.action(
        description="Archive: refuse new messages, hide from the room list",
        permissions=["moderate"],
    )
    def archive_rooms(
        self, request: HttpRequest, queryset: QuerySet[Room]
    ) -> TemplateResponse | None:
        page = self._confirmed(
            request, queryset, "archive_rooms", "archive (no new messages; hidden and 404 for all)"
        )
        if page is not None:
            return page
        for room in queryset:
            services.room_archive(room, by=request.user)
        self.message_user(request, f"Archived {queryset.count()} room(s).", messages.SUCCESS)
        return None

    @admin.action(description="Unarchive", permissions=["moderate"])
    def unarchive_rooms(
        self, request: HttpRequest, queryset: QuerySet[Room]
    ) -> TemplateResponse | None:
        page = self._confirmed(request, queryset, "unarchive_rooms", "unarchive")
        if page is not None:
            return page
        for room in queryset:
            services.room_unarchive(room, by=request.user)
        self.message_user(request, f"Unarchived {queryset.count()} room(s).", messages.SUCCESS)
        return None

    @admin.action(description="Purge history (seqs are never reused)", permissions=["purge"])
    def purge_history(
        self, request: HttpRequest, queryset: QuerySet[Room]
    ) -> TemplateResponse | None:
        page = self._confirmed(
            request, queryset, "purge_history", "purge the history of (cannot be undone)"
        )
        if page is not None:
            return page
        for room in queryset:
            services.room_purge_history(room, by=request.user)
        self.message_user(request, f"Purged {queryset.count()} room(s).", messages.SUCCESS)
        return None

    @admin.action(
        description="Move to another node (hand-off, no lost messages)", permissions=["move"]
    )
    def move_rooms(self, request: HttpRequest, queryset: QuerySet[Room]) -> TemplateResponse | None:
        page = self._confirmed(request, queryset, "move_rooms", "move to another node")
        if page is not None:
            return page
        for room in queryset:
            services.room_move(room, by=request.user)
        self.message_user(
            request, f"Asked the owners of {queryset.count()} room(s) to hand them off.",
            messages.SUCCESS,
        )  # fmt: skip
        return None

    def delete_model(self, request: HttpRequest, obj: Room) -> None:
        super().delete_model(request, obj)  # the signal leaves a tombstone, drops Redis keys
        services.moderation_log(request.user, "delete", obj.slug)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        slugs = list(queryset.values_list("slug", flat=True))
        super().delete_queryset(request, queryset)
        for slug in slugs:
            services.moderation_log(request.user, "delete", slug)


@admin.register(ModerationLog)
class ModerationLogAdmin(ReadOnlyRows, admin.ModelAdmin):  # type: ignore[type-arg]
    """Read only: a record of who did what, never edited."""

    list_display = ["created_at", "actor_name", "action", "room_slug", "target", "detail"]
    list_filter = ["action", "created_at"]
    search_fields = ["actor_name", "room_slug", "target"]


class BotTokenForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = BotToken
        fields = ["name", "all_rooms", "rooms"]

    def clean_name(self) -> str:
        name = str(self.cleaned_data["name"])
        problem = bots.name_problem(name)
        if problem:
            raise forms.ValidationError(problem)
        return name


@admin.register(BotToken)
class BotTokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Tokens for bots: the token is made on save and shown once (only its hash is kept);
    revoking is final (a new token is a new row)."""

    form = BotTokenForm
    list_display = ["name", "key", "all_rooms", "created_at", "last_used_at", "revoked"]
    list_filter = ["all_rooms", "revoked_at", "created_at"]
    search_fields = ["name", "key"]
    filter_horizontal = ["rooms"]
    readonly_fields = ["key", "principal", "created_at", "created_by", "last_used_at",
                       "revoked_at"]  # fmt: skip
    actions = ["revoke_tokens"]

    @admin.display(boolean=True, description="revoked")
    def revoked(self, bot: BotToken) -> bool:
        return bot.revoked

    @admin.display(description="posts as")
    def principal(self, bot: BotToken) -> str:
        return bot.principal if bot.pk else "–"

    def save_model(self, request: HttpRequest, obj: BotToken, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user  # type: ignore[assignment]
            obj._issued_token = bots.issue(obj)  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: BotToken, post_url_continue: str | None = None
    ) -> HttpResponse:
        token = getattr(obj, "_issued_token", None)
        if token is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Token for {obj.name}",
            "opts": self.model._meta,
            "bot": obj,
            "token": token,
        }
        response = TemplateResponse(request, "admin/rooms/bottoken/token_issued.html", context)
        response["Cache-Control"] = "no-store"  # the one copy of the token: never cached
        return response

    @admin.action(description="Revoke: the token stops working at once", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[BotToken]) -> None:
        for bot in queryset:
            bots.revoke(bot)
        self.message_user(request, f"Revoked {queryset.count()} token(s).", messages.SUCCESS)


class AuthorFilter(admin.SimpleListFilter):
    """The most frequent authors among the messages shown (bounded: never every author)."""

    title = "author"
    parameter_name = "author"
    SHOWN = 20

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        found = Message.objects.all()
        room = request.GET.get("room__id__exact")
        if room and room.isdigit():
            found = found.filter(room_id=int(room))
        top = (
            found.values("author_name")
            .annotate(n=Count("pk"))
            .order_by("-n", "author_name")[: self.SHOWN]
        )
        return [(row["author_name"], f"{row['author_name']} ({row['n']})") for row in top]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> QuerySet[Message]:
        value = self.value()
        return queryset.filter(author_name=value) if value else queryset


class DeletedFilter(SetOrNotFilter):
    title = "deleted"
    parameter_name = "deleted"
    field = "deleted"
    options = (("no", "Shown"), ("yes", "Deleted"))


@admin.register(Message)
class MessageAdmin(ReadOnlyRows, admin.ModelAdmin):  # type: ignore[type-arg]
    """The archive of every room (rooms.archive), read only: messages change through their
    room's owner (the socket's edit and delete), never by writing rows here."""

    list_display = ["created", "room", "message_id", "author_name", "author", "text", "edited",
                    "deleted"]  # fmt: skip
    list_filter = [("room", admin.RelatedOnlyFieldListFilter), AuthorFilter, DeletedFilter,
                   "guest", "created"]  # fmt: skip
    search_fields = ["body", "author_name", "=author", "=message_id"]
    date_hierarchy = "created"
    ordering = ["-created"]
    list_select_related = ["room"]
    show_full_result_count = False  # no second COUNT over the whole archive per page
    list_per_page = 100

    @admin.display(description="message")
    def text(self, message: Message) -> str:
        return message.body if len(message.body) <= 120 else message.body[:119] + "…"

    # Moderation goes through the room's owner (rooms.posting.moderate_message), like a
    # socket's edit or delete: every client converges, and the archive follows the log.
    actions = ["delete_through_room", "edit_through_room"]

    def has_moderate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("rooms.moderate_room")

    def _page(
        self, request: HttpRequest, queryset: QuerySet[Message], **extra: Any
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "queryset": queryset,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
            **extra,
        }
        return TemplateResponse(request, "admin/rooms/message/moderate.html", context)

    def _moderate(
        self, request: HttpRequest, message: Message, action: str, body: str | None
    ) -> str | None:
        """None if the room's owner applied it; else why not (the socket's error text)."""
        try:
            posting.moderate_message(
                message.room.slug, message.message_id, action=action, user=request.user, body=body
            )
        except CommandError as exc:
            return f"{message.message_id}: {exc.detail or exc.code}"
        return None

    @admin.action(
        description="Delete through the room (every client sees it)", permissions=["moderate"]
    )
    def delete_through_room(
        self, request: HttpRequest, queryset: QuerySet[Message]
    ) -> TemplateResponse | None:
        if request.POST.get("post") != "yes":
            return self._page(
                request, queryset, title="Are you sure?", action="delete_through_room",
                what="You are about to delete these messages for everyone",
            )  # fmt: skip
        failed = [
            why for m in queryset if m.deleted is None
            for why in [self._moderate(request, m, "delete", None)] if why
        ]  # fmt: skip
        if failed:
            self.message_user(request, "Not deleted: " + "; ".join(failed), messages.ERROR)
        else:
            self.message_user(request, f"Deleted {queryset.count()} message(s).", messages.SUCCESS)
        return None

    @admin.action(description="Edit through the room (one message)", permissions=["moderate"])
    def edit_through_room(
        self, request: HttpRequest, queryset: QuerySet[Message]
    ) -> TemplateResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Choose exactly one message to edit.", messages.WARNING)
            return None
        message = queryset.get()
        body = request.POST.get("body")
        page = {
            "title": "Edit a message",
            "action": "edit_through_room",
            "editing": True,
            "what": "The new text of this message, for everyone",
            "max_body": MAX_FRAME_CHARS,
        }
        if request.POST.get("post") != "yes" or body is None:
            return self._page(request, queryset, body=message.body, **page)
        why = self._moderate(request, message, "edit", body)
        if why:
            return self._page(request, queryset, body=body, error=why, **page)
        self.message_user(request, f"Edited {message.message_id}.", messages.SUCCESS)
        return None
