"""Every use of a framework's private or undocumented attribute, one module per framework.

An upgrade of py-amqp, kombu, Celery or Django can move what these modules touch, and nothing
else in marketplace touches such things. Each use says why the public API does not serve, and
tests/test_framework_internals.py names every attribute relied on: after an upgrade it fails
with a message that points at the module here to mend (docs/upgrading.md).
"""
