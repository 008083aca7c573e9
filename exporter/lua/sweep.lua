-- Apply one sweep plan if the monitor is still at the version it was read
-- at (compare-and-set: two sweepers never record the same slot twice).
-- KEYS: 1 state, 2 runs, 3 tmo, 4 counters, 5 history, 6 due, 7 uptime,
--       8 change feed, 9 change feed sequence
-- ARGV: 1 the plan (json object): monitor, now, expected_version, missed
--       (slots to record as missed), accounted_through and next_slot (the
--       new accounting; absent: keep it), timed_out (run ids now past
--       max_runtime), miss_after (grace + clock skew allowance),
--       failure_threshold, recovery_threshold, history_cap, forgiven
--       (slots skipped for an outage), lost (run ids open during an outage
--       and now past max_runtime: dropped without a timeout), bad (outcome
--       -> whether it is bad, for missed and timeout: rules.BAD_OUTCOMES)
-- Returns {'ok', version} | {'conflict'}
-- Everything is read and checked before the first write.
local state, runs, tmo, counters, history, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local p = cjson.decode(ARGV[1])
need(p, {monitor = 'string', now = 'number', expected_version = 'number', missed = 'number',
         miss_after = 'number', failure_threshold = 'number', recovery_threshold = 'number',
         history_cap = 'number', forgiven = 'number', timed_out = 'table', lost = 'table', bad = 'table'})
local monitor, now, missed, miss_after = p.monitor, p.now, p.missed, p.miss_after
local fthr, rthr, cap, bad = p.failure_threshold, p.recovery_threshold, p.history_cap, p.bad
local version = tonumber(redis.call('HGET', state, 'v') or '0')
if version ~= p.expected_version then return {'conflict'} end

version = redis.call('HINCRBY', state, 'v', 1)
if p.accounted_through then
  redis.call('HSET', state, 'acc', fmt(p.accounted_through), 'next', p.next_slot and fmt(p.next_slot) or '')
end
if missed > 0 then
  apply_outcome(state, counters, 'missed', missed, bad.missed, fthr, rthr)
  count_uptime(KEYS[7], 'missed', missed, now)
  local seq = redis.call('HINCRBY', state, 'seq', 1)
  push_history(history, {seq = seq, t = now, kind = 'missed', outcome = 'missed', slots = missed, through = p.accounted_through}, cap)
end
for _, rid in ipairs(p.timed_out) do
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
local forgiven, lost, dropped = p.forgiven, p.lost, {}
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
  if forgiven > 0 then entry.through = p.accounted_through end
  if #dropped > 0 then entry.runs = dropped end
  push_history(history, entry, cap)
end
update_due(state, tmo, due, monitor, miss_after)
mark_changed(KEYS[8], KEYS[9], monitor)
return {'ok', version}
