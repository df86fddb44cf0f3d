-- The version table of a pre-release txlock in this schema, if any (NULL: none).
SELECT to_regclass(%(legacy)s)::text
