from django.contrib import admin
from django.urls import include, path

from rooms import views_api
from rooms.login_throttle import AdminLoginForm

# The admin's log-in page counts failures like the site's (rooms/login_throttle.py).
admin.site.login_form = AdminLoginForm

urlpatterns = [
    path("healthz", views_api.healthz, name="healthz"),
    path("readyz", views_api.readyz, name="readyz"),
    path("metrics", views_api.metrics_view, name="metrics"),
    path("api/rooms/", views_api.rooms_list, name="api-rooms"),
    path("api/rooms/<str:slug>/events", views_api.room_events, name="api-room-events"),
    path("api/rooms/<str:slug>/messages", views_api.room_messages, name="api-room-messages"),
    path("api/rooms/<str:slug>/search", views_api.room_search, name="api-room-search"),
    path("api/cluster/", views_api.cluster, name="api-cluster"),
    path("admin/", admin.site.urls),
    path("", include("rooms.urls_web")),
]
