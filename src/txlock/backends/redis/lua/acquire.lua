-- One attempt to acquire; with a waiter id, queue that waiter unless it is granted.
-- KEYS: the lock's hold, queue, queue entries and watchers.
-- ARGV: holder, ttl ms (0 = bound to its process), liveness ms, key[, waiter id, channel].
-- Reply: {1, token, now ms, life ms} granted | {0, holder, pttl ms} busy.
local hold_key, queue_key, entries_key, watchers_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local holder, ttl, liveness, waiter_id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[5] or ''
local life = ttl
if ttl == 0 then life = liveness end
local fields = redis.call('HMGET', hold_key, 'holder', 'token')
if fields[1] == holder and waiter_id == '' then
  redis.call('HSET', hold_key, 'ttl', ARGV[2])
  redis.call('PEXPIRE', hold_key, life)
  local clock = redis.call('TIME')
  return {1, tonumber(fields[2]), clock[1] * 1000 + math.floor(clock[2] / 1000), life}
end
if not fields[1] and waiter_id == '' and redis.call('EXISTS', queue_key) == 0 then
  local clock = redis.call('TIME')
  local now_us = clock[1] * 1000000 + clock[2]
  local token = (tonumber(fields[2]) or 0) + 1
  if token < now_us then token = now_us end
  local now = math.floor(now_us / 1000)
  redis.call('HSET', hold_key, 'holder', holder, 'token', string.format('%.0f', token),
             'at', string.format('%.0f', now), 'ttl', ARGV[2], 'key', ARGV[4])
  redis.call('PEXPIRE', hold_key, life)
  return {1, token, now, life}
end
--#include functions
local lock_key, channel = ARGV[4], ARGV[6]
local current = fields[1]
if current == holder then
  redis.call('HSET', hold_key, 'ttl', ARGV[2])
  redis.call('PEXPIRE', hold_key, life)
  dequeue(waiter_id)
  return {1, tonumber(redis.call('HGET', hold_key, 'token')), now, life}
end
if not current then
  local first = head()
  if (not first) or first == waiter_id then
    if first then dequeue(waiter_id) end
    local token, granted_life = grant(holder, ttl, liveness, waiter_id, lock_key)
    return {1, token, now, granted_life}
  end
  current = vacate(liveness, lock_key)
end
if waiter_id ~= '' then
  if not redis.call('ZSCORE', queue_key, waiter_id) then
    local score = now_us
    local last = redis.call('ZRANGE', queue_key, -1, -1, 'WITHSCORES')[2]
    if last and tonumber(last) >= score then score = tonumber(last) + 1 end
    redis.call('ZADD', queue_key, digits(score), waiter_id)
  end
  redis.call('HSET', entries_key, waiter_id, cmsgpack.pack(now + liveness, holder, ttl, channel))
  redis.call('PEXPIRE', queue_key, 2 * liveness)
  redis.call('PEXPIRE', entries_key, 2 * liveness)
end
return {0, current, redis.call('PTTL', hold_key)}
