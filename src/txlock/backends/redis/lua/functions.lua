-- The functions the scripts' slow paths share (a queue, watchers, a hand-off). A script
-- includes them after its fast path: defining closures costs time on every call.
-- Needs hold_key, queue_key, entries_key and watchers_key declared before it.
local clock = redis.call('TIME')
local now_us = clock[1] * 1000000 + clock[2]
local now = math.floor(now_us / 1000)

local function digits(number) return string.format('%.0f', number) end

-- Make `holder` the holder with a new token; a ttl of 0 binds the hold to its process
-- (it lives `liveness` ms at a time, renewed by that process's heartbeat).
local function grant(holder, ttl, liveness, waiter_id, lock_key)
  local token = (tonumber(redis.call('HGET', hold_key, 'token')) or 0) + 1
  if token < now_us then token = now_us end
  local life = ttl
  if ttl == 0 then life = liveness end
  redis.call('HSET', hold_key, 'holder', holder, 'token', digits(token), 'at', digits(now), 'ttl', digits(ttl),
             'wid', waiter_id, 'key', lock_key)
  redis.call('PEXPIRE', hold_key, life)
  return token, life
end

-- The longest live waiter (dropping entries of dead processes on the way).
local function head()
  while true do
    local first = redis.call('ZRANGE', queue_key, 0, 0)[1]
    if not first then return nil end
    local packed = redis.call('HGET', entries_key, first)
    if packed then
      local deadline, holder, ttl, channel = cmsgpack.unpack(packed)
      if deadline >= now then return first, holder, ttl, channel end
    end
    redis.call('ZREM', queue_key, first)
    redis.call('HDEL', entries_key, first)
  end
end

local function dequeue(waiter_id)
  redis.call('ZREM', queue_key, waiter_id)
  redis.call('HDEL', entries_key, waiter_id)
end

-- Whether this server is part of a Redis Cluster: there PUBLISH counts only the receivers
-- connected to this node, so a count of 0 says nothing about the waiter's process.
local function clustered()
  return string.find(redis.call('INFO', 'cluster'), 'cluster_enabled:1', 1, true) ~= nil
end

-- The key has no live hold: hand it to the longest waiter (and tell that waiter's process
-- on its channel), else free it and wake the watchers. Returns the new holder or nil.
-- Each process listens on a channel of its own; when nobody hears the hand-off, that
-- process is gone (its connection closed with it) although its queue entry has not expired
-- yet: the grant is taken back (its token stays spent) and the next waiter is served, so a
-- killed waiter does not keep the key for a liveness window (or its whole ttl).
local function vacate(liveness, lock_key)
  while true do
    local waiter_id, holder, ttl, channel = head()
    if not waiter_id then break end
    dequeue(waiter_id)
    local token, life = grant(holder, ttl, liveness, waiter_id, lock_key)
    local heard = redis.call('PUBLISH', channel,
               'g ' .. waiter_id .. ' ' .. digits(token) .. ' ' .. digits(now) .. ' ' .. digits(life))
    if heard > 0 or clustered() then return holder end
  end
  redis.call('HDEL', hold_key, 'holder', 'at', 'ttl', 'wid')
  for _, entry in ipairs(redis.call('SMEMBERS', watchers_key)) do
    local space = string.find(entry, ' ', 1, true)
    if space then
      redis.call('PUBLISH', string.sub(entry, 1, space - 1), 'f ' .. string.sub(entry, space + 1))
    end
  end
  redis.call('DEL', watchers_key)
  return nil
end
