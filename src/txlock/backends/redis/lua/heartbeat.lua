-- The heartbeat of one process: renew its process-bound holds and keep its waiting calls
-- in their keys' queues, in one call for all of them.
-- KEYS: the hold keys of its process-bound holds; then, per key with calls of this process
-- waiting on it, that key's hold, queue, entries and watchers keys.
-- ARGV: the number of holds; per hold (token, liveness ms); per waiting key (liveness ms,
-- this process's channel, n, the n ids of its queued acquirers, m, the m ids of its watchers).
-- Reply: {1-based indexes of the holds that are lost, ids of the calls to wake}: an acquirer
-- whose queue entry is gone (handed the lock, or dropped while this process was silent), the
-- first queued acquirer of a key nobody holds (its look hands the key on), and the watchers
-- of a key that is free. Commands per waiting key, not per waiting call.
local holds = tonumber(ARGV[1])
local lost, wake = {}, {}
for index = 1, holds do
  local fields = redis.call('HMGET', KEYS[index], 'token', 'ttl')
  if fields[1] == ARGV[2 * index] and fields[2] == '0' then
    redis.call('PEXPIRE', KEYS[index], ARGV[2 * index + 1])
  else
    lost[#lost + 1] = index
  end
end
if #KEYS > holds then
  local clock = redis.call('TIME')
  local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
  local at = 2 * holds + 2
  for base = holds + 1, #KEYS, 4 do
    local hold_key, queue_key, entries_key, watchers_key = KEYS[base], KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
    local liveness, channel, count = tonumber(ARGV[at]), ARGV[at + 1], tonumber(ARGV[at + 2])
    at = at + 3
    local free = redis.call('HEXISTS', hold_key, 'holder') == 0
    local nudge = free
    if count > 0 then
      local packed = redis.call('HMGET', entries_key, unpack(ARGV, at, at + count - 1))
      local renewed = {}
      for offset = 1, count do
        local entry = packed[offset]
        if entry then
          if nudge then
            wake[#wake + 1] = ARGV[at + offset - 1]
            nudge = false -- one look is enough to hand the key on
          end
          local _, holder, ttl, wake_channel = cmsgpack.unpack(entry)
          renewed[#renewed + 1] = ARGV[at + offset - 1]
          renewed[#renewed + 1] = cmsgpack.pack(now + liveness, holder, ttl, wake_channel)
        else
          wake[#wake + 1] = ARGV[at + offset - 1]
        end
      end
      if #renewed > 0 then
        redis.call('HSET', entries_key, unpack(renewed))
        redis.call('PEXPIRE', queue_key, 2 * liveness)
        redis.call('PEXPIRE', entries_key, 2 * liveness)
      end
      at = at + count
    end
    count = tonumber(ARGV[at])
    at = at + 1
    if count > 0 then
      if free then
        for offset = 0, count - 1 do wake[#wake + 1] = ARGV[at + offset] end
      else
        local entries = {}
        for offset = 0, count - 1 do entries[offset + 1] = channel .. ' ' .. ARGV[at + offset] end
        redis.call('SADD', watchers_key, unpack(entries))
        redis.call('PEXPIRE', watchers_key, 2 * liveness)
      end
      at = at + count
    end
  end
end
return {lost, wake}
