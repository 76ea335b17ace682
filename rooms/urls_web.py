from django.contrib.auth import views as auth_views
from django.urls import path

from . import views_web

urlpatterns = [
    path("", views_web.home, name="home"),
    path("rooms/new/", views_web.room_create, name="room-create"),
    path("r/<str:slug>/", views_web.room, name="room"),
    path("r/<str:slug>/guest", views_web.room_guest, name="room-guest"),
    path("r/<str:slug>/read", views_web.room_read, name="room-read"),
    path("accounts/signup/", views_web.signup, name="signup"),
    path("accounts/login/", views_web.LoginView.as_view(), name="login"),
    # Django's LogoutView takes POST only: the header's "Log out" is a small form.
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]
