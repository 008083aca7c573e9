-- One process's heartbeat: "a cronmon could take check-ins at `now`".
-- A gap since the previous heartbeat (of any process) longer than `gap`
-- was an outage: no cronmon took check-ins, or Redis was unreachable.
-- It is recorded here, atomically with the heartbeat that ends it, so no
-- process can make a miss decision with a newer heartbeat but without it.
-- KEYS: 1 heartbeat (the latest heartbeat time), 2 outages (zset:
--       "start:end" -> end)
-- ARGV: 1 the heartbeat (json object): now, gap, forget_before (outages
--       that ended before this are forgotten), keep (at most this many kept)
-- Returns the outages kept, oldest first: {start, end, start, end, ...}
local p = cjson.decode(ARGV[1])
need(p, {now = 'number', gap = 'number', forget_before = 'number', keep = 'number'})
local now, gap = p.now, p.gap
local last = num(redis.call('GET', KEYS[1]))
if last and now - last > gap then
  redis.call('ZADD', KEYS[2], now, fmt(last) .. ':' .. fmt(now))
end
-- The latest of all heartbeats: a process whose clock is behind must not
-- move it back (and so open a gap that was none).
if last == nil or now > last then redis.call('SET', KEYS[1], fmt(now)) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. fmt(p.forget_before))
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -p.keep - 1)
local out = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local from, to = string.match(member, '^([^:]+):(.+)$')
  out[#out + 1] = from
  out[#out + 1] = to
end
return out
