-- Claim the checks that are due: each is moved to its next due time in the
-- same script, so among any number of processes exactly one gets it.
-- KEYS: 1 probes hash, 2 probe schedule zset
-- ARGV: 1 the claim (json object): now, limit (at most this many)
-- Returns {id, due, id, due, ...}. A process that dies after claiming
-- loses that one check; the next one is anyone's (handover within one
-- interval). The next due time keeps the monitor's phase and skips checks
-- that are already in the past (after an outage: no burst of checks).
local probes, schedule = KEYS[1], KEYS[2]
local p = cjson.decode(ARGV[1])
need(p, {now = 'number', limit = 'number'})
local now, limit = p.now, p.limit
local due = redis.call('ZRANGEBYSCORE', schedule, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local claimed = {}
for i = 1, #due, 2 do
  local id, at = due[i], tonumber(due[i + 1])
  local fp = redis.call('HGET', probes, id)
  if fp then
    local interval = cjson.decode(fp).i
    local next_at = at + interval
    if next_at <= now then next_at = now + interval - ((now - at) % interval) end
    redis.call('ZADD', schedule, next_at, id)
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = fmt(at)
  else
    redis.call('ZREM', schedule, id)
  end
end
return claimed
