"""Django internals the order service relies on (orders/services.py)."""

from __future__ import annotations

from typing import Any


def cache_prefetched(instance: Any, relation: str, rows: list[Any]) -> None:
    """Cache ``rows`` as ``instance.<relation>.all()``, the way prefetch_related stores what it
    loaded, so the event and the response use the lines just written without reading them back.
    Django has no public API to seed that cache: these are the attributes prefetch_related_objects
    sets (``QuerySet._result_cache``, ``_prefetch_done``, ``Model._prefetched_objects_cache``)."""
    queryset = getattr(instance, relation).all()
    queryset._result_cache = rows
    queryset._prefetch_done = True
    instance._prefetched_objects_cache = {relation: queryset}
