from django.urls import path

from . import async_views
from .urls import urlpatterns as shared

urlpatterns = [
    *shared,
    path("astream", async_views.stream),
    path("events", async_views.events),
    path("events/<str:track>", async_views.event_status),
]
