-- Describe the hold. Reply: nil (free) | {holder, token, acquired ms, ttl ms, pttl ms,
-- now ms, live waiters}.
local hold_key, entries_key = KEYS[1], KEYS[3]
local fields = redis.call('HMGET', hold_key, 'holder', 'token', 'at', 'ttl')
if not fields[1] then return nil end
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local waiters = 0
for _, packed in ipairs(redis.call('HVALS', entries_key)) do
  local deadline = cmsgpack.unpack(packed)
  if deadline >= now then waiters = waiters + 1 end
end
return {fields[1], tonumber(fields[2]), tonumber(fields[3]), tonumber(fields[4]), redis.call('PTTL', hold_key), now,
        waiters}
