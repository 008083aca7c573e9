-- Record one check-in atomically: run pairing, accounting, counters,
-- threshold state, capped history and log, meta, deadline index.
-- KEYS: 1 state, 2 runs, 3 tmo, 4 closed, 5 counters, 6 history, 7 logs,
--       8 logids, 9 meta, 10 due, 11 rate-limit counter, 12 uptime,
--       13 change feed, 14 change feed sequence
-- ARGV: 1 monitor, 2 now, 3 kind, 4 run_id, 5 exit_code, 6 duration,
--       7 message, 8 log, 9 log_truncated, 10 meta (json object),
--       11 extra (json object), 12 arrival plan (json, see ArrivalPlan),
--       13 grace, 14 max_runtime, 15 failure_threshold,
--       16 recovery_threshold, 17 history_cap, 18 log_cap,
--       19 buckets (json array), 20 generated_run_id, 21 meta_cap,
--       22 open_runs_cap, 23 closed_cap, 24 outcome override for a
--       success ('' or 'silent_failure'), 25 rate limit count (0: none),
--       26 rate limit window (seconds), 27 annotations (json object or ''),
--       28 probe HTTP status code ('' unless an active check's result)
-- Returns {'ok', seq, run_id, duration} | {'duplicate', run_id}
--       | {'sweep'}: a deadline passed unrecorded; sweep, then call again
--       | {'slot', s}: the arrival is for slot s, which the plan lacks
--       | {'limited', ms}: over the monitor's rate limit; retry in ms
-- Nothing is written unless the reply is 'ok'.
local state, runs, tmo, closed, counters = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local history, logs, logids, meta, due = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local monitor, now, kind, run_id = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local exit_code, reported_duration = num(ARGV[5]), num(ARGV[6])
local plan, grace = cjson.decode(ARGV[12]), tonumber(ARGV[13])
local max_runtime = num(ARGV[14])
local fthr, rthr = tonumber(ARGV[15]), tonumber(ARGV[16])
local history_cap, log_cap = tonumber(ARGV[17]), tonumber(ARGV[18])
local meta_cap, open_cap, closed_cap = tonumber(ARGV[21]), tonumber(ARGV[22]), tonumber(ARGV[23])

-- Outcomes are applied in time order: a deadline that passed before this
-- check-in must be recorded as missed first. The caller sweeps and retries.
local expected = num(redis.call('HGET', state, 'next'))
if expected and expected + grace <= now then return {'sweep'} end

local completes = (kind == 'success' or kind == 'fail' or kind == 'warning')
-- A retried start or completion for a run id we already have changes nothing.
if run_id ~= '' then
  if kind == 'start' and (redis.call('HEXISTS', runs, run_id) == 1 or redis.call('ZSCORE', closed, run_id)) then
    return {'duplicate', run_id}
  end
  if completes and redis.call('ZSCORE', closed, run_id) then return {'duplicate', run_id} end
end

-- Which open run a completion closes: the one with its run id, else the
-- newest. A start, or a completion that closes nothing, is an arrival.
local closing = nil
if completes then
  if run_id ~= '' then
    if redis.call('HEXISTS', runs, run_id) == 1 then closing = run_id end
  else
    local all, newest_at = redis.call('HGETALL', runs), nil
    for i = 1, #all, 2 do
      local s = cjson.decode(all[i + 1]).s
      if newest_at == nil or s > newest_at then closing, newest_at = all[i], s end
    end
  end
end
local arrival = (kind == 'start') or (completes and closing == nil)

-- The slot an arrival accounts for: with an interval schedule, itself;
-- else the first slot not yet accounted for, if the arrival is at most
-- `grace` early for it (an earlier one is an extra run and accounts for
-- nothing); before the first arrival, the plan's best guess.
local target, target_next = nil, nil
if arrival then
  if plan.anchored or expected == nil then
    target, target_next = plan.first[1], plan.first[2]
  elseif expected <= now + grace then
    for _, candidate in ipairs(plan.candidates) do
      if math.abs(candidate[1] - expected) < 0.5 then target, target_next = candidate[1], candidate[2] end
    end
    if target == nil then return {'slot', fmt(expected)} end
  end
end

-- Rate limit last among the checks, so a call retried after 'sweep' or
-- 'slot' is counted once. Fixed window; a refused check-in changes nothing
-- but the counter.
local limit = tonumber(ARGV[25])
if limit > 0 then
  local used = redis.call('INCR', KEYS[11])
  if used == 1 then redis.call('PEXPIRE', KEYS[11], math.floor(tonumber(ARGV[26]) * 1000)) end
  if used > limit then
    local ttl = redis.call('PTTL', KEYS[11])
    if ttl < 0 then redis.call('PEXPIRE', KEYS[11], math.floor(tonumber(ARGV[26]) * 1000)); ttl = tonumber(ARGV[26]) * 1000 end
    return {'limited', ttl}
  end
end

local seq = redis.call('HINCRBY', state, 'seq', 1)
redis.call('HINCRBY', state, 'v', 1)
redis.call('HINCRBY', counters, 'c:' .. kind, 1)
-- A log event says nothing about the job running (Healthchecks: /log does
-- not change the status), so it does not end the monitor's "new" state.
if kind ~= 'log' then redis.call('HSETNX', state, 'first', ARGV[2]) end
redis.call('HSET', state, 'last', ARGV[2])
local entry = {seq = seq, t = now, kind = kind}
local extra = cjson.decode(ARGV[11])
if ARGV[27] ~= '' then entry.ann = cjson.decode(ARGV[27]) end
for k, v in pairs(extra) do entry[k] = v end
if ARGV[7] ~= '' then entry.message = ARGV[7] end
if exit_code then entry.exit_code = exit_code end

local function drop_run(id)
  redis.call('HDEL', runs, id)
  redis.call('ZREM', tmo, id)
end

local function arrive()
  if target then
    local acc = num(redis.call('HGET', state, 'acc'))
    if acc == nil or target > acc then
      redis.call('HSET', state, 'acc', fmt(target), 'next', fmt(target_next))
    end
  end
  -- Runs that already timed out are abandoned once the job runs again.
  local all = redis.call('HGETALL', runs)
  for i = 1, #all, 2 do
    if cjson.decode(all[i + 1]).t == 1 then drop_run(all[i]) end
  end
end

local function close_recent(id)
  redis.call('ZADD', closed, now, id)
  redis.call('ZREMRANGEBYRANK', closed, 0, -closed_cap - 1)
end

local result_run, duration = '', nil
if kind == 'start' then
  local rid = run_id
  if rid == '' then
    rid = ARGV[20]
    -- A new start without a run id replaces the previous one without a run
    -- id (the Healthchecks rule): the earlier one is forgotten, not failed.
    local all = redis.call('HGETALL', runs)
    for i = 1, #all, 2 do
      if cjson.decode(all[i + 1]).a == 1 then drop_run(all[i]); entry.replaced = all[i] end
    end
  end
  arrive()
  redis.call('HSET', runs, rid, cjson.encode({s = now, a = (run_id == '') and 1 or 0, t = 0}))
  if max_runtime then redis.call('ZADD', tmo, now + max_runtime, rid) end
  if redis.call('HLEN', runs) > open_cap then
    local all, oldest, oldest_at = redis.call('HGETALL', runs), nil, nil
    for i = 1, #all, 2 do
      local s = cjson.decode(all[i + 1]).s
      if oldest_at == nil or s < oldest_at then oldest, oldest_at = all[i], s end
    end
    drop_run(oldest); entry.evicted = oldest
  end
  redis.call('HSET', state, 'last_start', ARGV[2])
  result_run = rid
elseif completes then
  local rid = closing
  duration = reported_duration
  if rid then
    local run = cjson.decode(redis.call('HGET', runs, rid))
    drop_run(rid)
    if duration == nil then duration = now - run.s end
    entry.started = run.s
  else
    arrive()  -- a completion with no start is itself the arrival
  end
  result_run = rid or run_id
  if result_run == '' then result_run = ARGV[20] end
  close_recent(result_run)
  local outcome = 'ok'
  if kind == 'fail' then outcome = 'error' elseif kind == 'warning' then outcome = 'warning'
  elseif ARGV[24] ~= '' then outcome = ARGV[24] end
  entry.outcome = outcome
  if outcome == 'error' then
    redis.call('HSET', state, 'last_failure', ARGV[2])
  else
    redis.call('HSET', state, 'last_success', ARGV[2])
  end
  if exit_code then redis.call('HSET', state, 'last_exit', exit_code) end
  if duration then
    if duration < 0 then duration = 0 end
    entry.duration = duration
    redis.call('HSET', state, 'last_duration', fmt(duration))
    local buckets, index = cjson.decode(ARGV[19]), nil
    for i, bound in ipairs(buckets) do
      if duration <= bound then index = i; break end
    end
    redis.call('HINCRBY', counters, 'b:' .. (index or 'inf'), 1)
    redis.call('HINCRBYFLOAT', counters, 'dsum', duration)
    redis.call('HINCRBY', counters, 'dcount', 1)
  end
  apply_outcome(state, counters, outcome, 1, fthr, rthr)
  count_uptime(KEYS[12], outcome, 1, now)
else
  result_run = run_id
end
if result_run ~= '' then entry.run = result_run end

if ARGV[8] ~= '' then
  redis.call('HSET', logs, seq, ARGV[8])
  redis.call('RPUSH', logids, seq)
  while redis.call('LLEN', logids) > log_cap do
    redis.call('HDEL', logs, redis.call('LPOP', logids))
  end
  entry.log = seq
  if ARGV[9] == '1' then entry.log_truncated = true end
end

local values = cjson.decode(ARGV[10])
for k, v in pairs(values) do
  if redis.call('HEXISTS', meta, k) == 1 or redis.call('HLEN', meta) < meta_cap then
    redis.call('HSET', meta, k, fmt(v))
  else
    entry.meta_dropped = true
  end
end

if ARGV[28] ~= '' then
  -- An active check's result is also the monitor's latest probe result.
  entry.status_code = tonumber(ARGV[28])
  redis.call('HSET', state, 'probe_t', ARGV[2], 'probe_ok', (kind == 'fail') and 0 or 1,
    'probe_dur', reported_duration and fmt(reported_duration) or '0', 'probe_code', ARGV[28])
end

push_history(history, entry, history_cap)
update_due(state, tmo, due, monitor, grace)
mark_changed(KEYS[13], KEYS[14], monitor)
return {'ok', seq, result_run, duration and fmt(duration) or ''}
