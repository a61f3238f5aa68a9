"""The ASGI entry point, as `django-admin startproject` makes it (settings: asgi_settings)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_site.asgi_settings")

application = get_asgi_application()
