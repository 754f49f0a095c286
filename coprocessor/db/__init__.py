"""The data layer. ``queries`` holds every SQL statement; nothing else imports asyncpg
except ``pool``, ``migrate`` and ``notify``, which own connections."""
