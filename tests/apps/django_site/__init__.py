"""A small Django project for tests/behaviour/test_frameworks.py: `django_site.wsgi:application`."""
