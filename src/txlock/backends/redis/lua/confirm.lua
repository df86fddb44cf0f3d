-- Rewrite the holder field of the grant `token` of `holder`: a write, so that a WAIT sent
-- after it on the same connection covers that grant (WAIT counts from the connection's
-- last write).
-- ARGV: holder, token. Reply: 1 | 0 when that grant no longer holds the key.
local fields = redis.call('HMGET', KEYS[1], 'holder', 'token')
if fields[1] ~= ARGV[1] or fields[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
return 1
