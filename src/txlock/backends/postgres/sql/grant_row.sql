-- Fragment of acquire.sql and acquire_first.sql: the row a grant writes. The token is
-- max(the table's high-water mark + 1, the server clock in microseconds); on conflict,
-- also the key's last token + 1 (see grant_conflict.sql).
SELECT %(key_hash)s, %(key)s, %(holder)s,
  greatest(coalesce((SELECT hwm FROM {versions} WHERE name = %(name)s), 0) + 1, {clock}),
  CASE WHEN %(ttl)s::float8 IS NULL THEN %(owner)s::uuid END, %(ttl)s::float8, now(),
  now() + make_interval(secs => coalesce(%(ttl)s::float8, %(liveness)s::float8))
