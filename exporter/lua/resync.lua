-- Re-base a monitor on a changed schedule, grace, max_runtime or pause
-- (compare-and-set like sweep.lua).
-- KEYS: 1 state, 2 runs, 3 tmo, 4 due, 5 change feed, 6 change feed sequence
-- ARGV: 1 the re-base (json object): monitor, expected_version,
--       accounting ('keep', 'clear': forget it, nothing is expected yet, or
--       'set' with accounted_through and next_slot), miss_after (grace +
--       clock skew allowance), max_runtime (absent: none), fingerprint
-- Returns {'ok'} | {'conflict'}
-- Everything is read and checked before the first write.
local state, runs, tmo, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local p = cjson.decode(ARGV[1])
need(p, {monitor = 'string', expected_version = 'number', accounting = 'string', miss_after = 'number',
         fingerprint = 'string'})
if p.accounting == 'set' then need(p, {accounted_through = 'number'}) end
local version = tonumber(redis.call('HGET', state, 'v') or '0')
if version ~= p.expected_version then return {'conflict'} end
local all = p.max_runtime and redis.call('HGETALL', runs) or {}
local open = {}
for i = 1, #all, 2 do open[#open + 1] = {all[i], cjson.decode(all[i + 1])} end

redis.call('HINCRBY', state, 'v', 1)
if p.accounting == 'clear' then redis.call('HDEL', state, 'acc', 'next')
elseif p.accounting == 'set' then
  redis.call('HSET', state, 'acc', fmt(p.accounted_through), 'next', p.next_slot and fmt(p.next_slot) or '')
end
redis.call('DEL', tmo)
for _, item in ipairs(open) do
  local rid, run = item[1], item[2]
  if run.t ~= 1 then redis.call('ZADD', tmo, run.s + p.max_runtime, rid) end
end
redis.call('HSET', state, 'fp', p.fingerprint)
update_due(state, tmo, due, p.monitor, p.miss_after)
mark_changed(KEYS[5], KEYS[6], p.monitor)
return {'ok'}
