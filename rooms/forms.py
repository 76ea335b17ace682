"""Forms of the web chat. They check shape only; the rules live in rooms.services."""

from __future__ import annotations

from django import forms
from django.contrib.auth.forms import UserCreationForm

from . import names
from .models import NameKey


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


class SignupForm(UserCreationForm):  # type: ignore[type-arg]
    """Django's sign-up form, refusing names that would pass for someone else's (rooms.names):
    invisible or control characters, or confusable with an existing account's name."""

    def clean_username(self) -> str:
        username = str(super().clean_username())
        problem = names.problem(username)
        if problem:
            raise forms.ValidationError(problem)
        if NameKey.objects.filter(key__in=names.keys(username)).exists():
            raise forms.ValidationError("A user with a name too close to that already exists.")
        return username
