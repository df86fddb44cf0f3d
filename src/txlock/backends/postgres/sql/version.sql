-- The schema version of this store's tables (fails with UndefinedTable before first use).
SELECT version FROM {versions} WHERE name = %(name)s
