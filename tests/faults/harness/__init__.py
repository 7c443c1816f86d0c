"""The fault ledger's harness: the real system as separate OS processes, on servers it owns.

    servers.py   a private PostgreSQL cluster and a private RabbitMQ node (other ports, temp dirs)
    edges.py     the outside world: an SMTP sink and a seller webhook server, both controllable
    system.py    the Procfile's processes (web, relay, recorder, one worker per subscriber)
    load.py      a load driver placing orders through the real HTTP API
    effects.py   the effects counter at the edge: lost, duplicated, oversold, dead-lettered
    kinds.py     the fault kinds, each returning one ledger row
    report.py    docs/reliability.md
    cli.py       bin/faults

Nothing here imports Django: the harness talks to the system only the way the outside world
does (HTTP, SMTP, webhooks, AMQP) and reads the database with plain SQL to count effects.
"""
