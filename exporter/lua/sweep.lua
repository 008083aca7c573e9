-- Apply one sweep plan if the monitor is still at the version it was read
-- at (compare-and-set: two sweepers never record the same slot twice).
-- KEYS: 1 state, 2 runs, 3 tmo, 4 counters, 5 history, 6 due, 7 uptime,
--       8 change feed, 9 change feed sequence
-- ARGV: 1 monitor, 2 now, 3 expected_version, 4 missed, 5 acc, 6 next,
--       7 timed_out (json array of run ids), 8 miss_after (grace + clock
--       skew allowance), 9 failure_threshold,
--       10 recovery_threshold, 11 history_cap, 12 forgiven (slots skipped
--       for an outage), 13 lost (json array of run ids open during an
--       outage and now past max_runtime: dropped without a timeout),
--       14 bad (json object: outcome -> whether it is bad, for missed and
--       timeout; model.BAD_OUTCOMES)
-- Returns {'ok', version} | {'conflict'}
local state, runs, tmo, counters, history, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local monitor, now = ARGV[1], tonumber(ARGV[2])
local version = tonumber(redis.call('HGET', state, 'v') or '0')
if version ~= tonumber(ARGV[3]) then return {'conflict'} end
local missed, miss_after = tonumber(ARGV[4]), tonumber(ARGV[8])
local fthr, rthr, cap = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local bad = cjson.decode(ARGV[14])

version = redis.call('HINCRBY', state, 'v', 1)
if ARGV[5] ~= '' then redis.call('HSET', state, 'acc', ARGV[5], 'next', ARGV[6]) end
if missed > 0 then
  apply_outcome(state, counters, 'missed', missed, bad.missed, fthr, rthr)
  count_uptime(KEYS[7], 'missed', missed, now)
  local seq = redis.call('HINCRBY', state, 'seq', 1)
  push_history(history, {seq = seq, t = now, kind = 'missed', outcome = 'missed', slots = missed, through = tonumber(ARGV[5])}, cap)
end
for _, rid in ipairs(cjson.decode(ARGV[7])) do
  local raw = redis.call('HGET', runs, rid)
  if raw then
    local run = cjson.decode(raw)
    if run.t ~= 1 then
      run.t = 1
      redis.call('HSET', runs, rid, cjson.encode(run))
      redis.call('ZREM', tmo, rid)
      apply_outcome(state, counters, 'timeout', 1, bad.timeout, fthr, rthr)
      local seq = redis.call('HINCRBY', state, 'seq', 1)
      push_history(history, {seq = seq, t = now, kind = 'timeout', outcome = 'timeout', run = rid, started = run.s}, cap)
    end
  end
end
-- An outage overlapped these: skipped, and said so in the history.
local forgiven, lost, dropped = tonumber(ARGV[12]), cjson.decode(ARGV[13]), {}
for _, rid in ipairs(lost) do
  if redis.call('HEXISTS', runs, rid) == 1 then
    redis.call('HDEL', runs, rid)
    redis.call('ZREM', tmo, rid)
    dropped[#dropped + 1] = rid
  end
end
if forgiven > 0 or #dropped > 0 then
  local seq = redis.call('HINCRBY', state, 'seq', 1)
  local entry = {seq = seq, t = now, kind = 'outage', slots = forgiven}
  if forgiven > 0 then entry.through = tonumber(ARGV[5]) end
  if #dropped > 0 then entry.runs = dropped end
  push_history(history, entry, cap)
end
update_due(state, tmo, due, monitor, miss_after)
mark_changed(KEYS[8], KEYS[9], monitor)
return {'ok', version}
