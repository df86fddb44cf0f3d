-- Version 1 of txlock's tables, created on first use in one transaction. Statements are
-- separated by a semicolon at the end of a line. Concurrent first users are serialized by
-- a transaction-scoped advisory lock (so a transaction pooler is fine).
SELECT pg_advisory_xact_lock(%(ddl_lock)s);

CREATE SCHEMA IF NOT EXISTS {schema};

-- One row per lock table: its schema version and the high-water mark of the tokens of
-- the rows the janitor swept.
CREATE TABLE IF NOT EXISTS {versions} (
  name text PRIMARY KEY,
  version integer NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  hwm bigint NOT NULL DEFAULT 0
);

CREATE {unlogged}TABLE IF NOT EXISTS {locks} (
  key_hash bytea PRIMARY KEY,      -- sha256 of key: fixed width, fits any btree
  key bytea NOT NULL,              -- prefix + key, UTF-8 with lone surrogates kept
  holder bytea NOT NULL,
  token bigint NOT NULL,           -- kept after release: the key's token high-water mark
  owner uuid,                      -- the process whose heartbeat renews a hold without hold_timeout
  ttl double precision,
  acquired_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL, -- -infinity once released
  granted uuid,                    -- the queued call this hold was handed to by a release
  wake boolean NOT NULL DEFAULT false  -- someone waits for this key to be free
);

CREATE INDEX IF NOT EXISTS {locks_prefix_index} ON {locks} (substring(key FROM 1 FOR {indexed}));

CREATE INDEX IF NOT EXISTS {locks_owner_index} ON {locks} (owner) WHERE owner IS NOT NULL;

CREATE UNLOGGED TABLE IF NOT EXISTS {waiters} (
  waiter uuid PRIMARY KEY,
  key_hash bytea NOT NULL,
  ticket bigint NOT NULL,
  owner uuid NOT NULL,
  expires_at timestamptz NOT NULL,
  session bigint,                  -- advisory lock held by the waiting process's LISTEN session
  -- What a release needs to hand the lock straight to this call:
  holder bytea,
  ttl double precision,
  span double precision
);

CREATE INDEX IF NOT EXISTS {waiters_key_index} ON {waiters} (key_hash, ticket);

CREATE INDEX IF NOT EXISTS {waiters_owner_index} ON {waiters} (owner);

INSERT INTO {versions} AS v (name, version) VALUES (%(name)s, %(version)s)
  ON CONFLICT (name) DO UPDATE SET version = greatest(v.version, EXCLUDED.version);

SELECT version FROM {versions} WHERE name = %(name)s
