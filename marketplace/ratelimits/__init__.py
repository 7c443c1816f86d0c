"""Rate limits of the API: orders per buyer, requests without valid credentials per client address.

DRF throttles (throttles.py) decide; PostgreSQL keeps the counts (counters.py), so every web
process, on every host, counts against the same limit. docs/operations.md, "Rate limits", says how
to set them and why they are built this way.
"""
