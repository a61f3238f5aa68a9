"""The WSGI project's settings, with the async views added (asgi_urls)."""

from .settings import *  # noqa: F403

ROOT_URLCONF = "django_site.asgi_urls"
