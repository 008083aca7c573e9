-- Re-base a monitor on a changed schedule, grace, max_runtime or pause
-- (compare-and-set like sweep.lua).
-- KEYS: 1 state, 2 runs, 3 tmo, 4 due, 5 change feed, 6 change feed sequence
-- ARGV: 1 monitor, 2 expected_version, 3 acc ('' keeps it, 'clear' forgets
--       it: nothing is expected yet), 4 next,
--       5 miss_after (grace + clock skew allowance), 6 max_runtime ('' none),
--       7 fingerprint
-- Returns {'ok'} | {'conflict'}
local state, runs, tmo, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local version = tonumber(redis.call('HGET', state, 'v') or '0')
if version ~= tonumber(ARGV[2]) then return {'conflict'} end
redis.call('HINCRBY', state, 'v', 1)
if ARGV[3] == 'clear' then redis.call('HDEL', state, 'acc', 'next')
elseif ARGV[3] ~= '' then redis.call('HSET', state, 'acc', ARGV[3], 'next', ARGV[4]) end
redis.call('DEL', tmo)
local max_runtime = num(ARGV[6])
if max_runtime then
  local all = redis.call('HGETALL', runs)
  for i = 1, #all, 2 do
    local run = cjson.decode(all[i + 1])
    if run.t ~= 1 then redis.call('ZADD', tmo, run.s + max_runtime, all[i]) end
  end
end
redis.call('HSET', state, 'fp', ARGV[7])
update_due(state, tmo, due, ARGV[1], tonumber(ARGV[5]))
mark_changed(KEYS[5], KEYS[6], ARGV[1])
return {'ok'}
