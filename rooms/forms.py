"""Forms of the web chat. They check shape only; the rules live in rooms.services."""

from __future__ import annotations

from django import forms


class RoomCreateForm(forms.Form):
    slug = forms.CharField(
        max_length=50,
        help_text="Lower-case letters, digits and hyphens; it becomes the room's address.",
        widget=forms.TextInput(
            attrs={"placeholder": "e.g. general", "autocapitalize": "none", "spellcheck": "false"}
        ),
    )
    name = forms.CharField(
        max_length=100,
        required=False,
        help_text="Optional; the slug is used when empty.",
        widget=forms.TextInput(attrs={"placeholder": "e.g. General chat"}),
    )
