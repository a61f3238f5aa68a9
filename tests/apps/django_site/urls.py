from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("api/items/<int:item_id>", views.item),
    path("api/items", views.add_item),
    path("form", views.form),
    path("upload", views.upload),
    path("stream", views.stream),
    path("download", views.download),
    path("cookie", views.cookie),
    path("boom", views.boom),
]
