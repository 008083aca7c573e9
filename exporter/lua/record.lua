-- Record one check-in atomically: run pairing, accounting, counters,
-- threshold state, capped history and log, meta, deadline index.
-- KEYS: 1 state, 2 runs, 3 tmo, 4 closed, 5 counters, 6 history, 7 logs,
--       8 logids, 9 meta, 10 due, 11 rate-limit counter, 12 uptime,
--       13 change feed, 14 change feed sequence, 15 abandoned runs (zset:
--       run id -> start of a timed-out run with a client run id that was
--       given up when the job ran again; its late completion still counts),
--       16 idempotency keys (zset: key -> when its check-in was recorded)
-- ARGV: 1 the monitor's settings: 8 little-endian doubles (Python's
--         struct '<8d'): grace, miss_after (grace plus the clock skew
--         allowance: when a slot counts as missed), max_runtime (< 0:
--         none), min_runtime (0: none), failure_threshold,
--         recovery_threshold, rate_count (0: no limit), rate_window
--         (seconds)
--       2 the monitor's id
--         (1 and 2 are the same on every check-in of the monitor: the
--         store sends the command up to here encoded once,
--         redis_lane.PreparedCall)
--       3 the check-in's numbers, doubles likewise: now, then its plan
--         (see ArrivalPlan): anchored (1 or 0), the first (slot, next
--         slot), then the candidate (slot, next slot) pairs
--       4 the rest of the check-in (json object): kind, run_id,
--         exit_code, duration, message, log_truncated, meta (object),
--         extra (object), generated_run_id, annotations (object),
--         probe_code (set only for an active check's result), outcome
--         and bad (for a completion: what it records and whether that is
--         bad for the thresholds, decided by rules.completion_outcome),
--         short_outcome and short_bad (what it records instead when its
--         duration is below the monitor's min_runtime:
--         rules.too_short_outcome), idempotency_key (a client's key for
--         this one check-in); absent fields are nil
--       5 the log body ('' for none), kept apart from the json
--       Numbers as doubles, not json: cjson's strtod and the tables it
--       builds were most of a check-in's argument decoding.
-- Constants (written in by store.record_script): LIMITS, the store's
--       limits: history, logs, meta_keys, open_runs, closed_runs,
--       idempotency_keys, idempotency_window (seconds); duration_buckets(),
--       the duration histogram's bucket bounds
-- Returns one text, its fields joined by newlines (the run id last, so
-- that it may hold any character):
--         'ok' seq duration ('' for none) run_id | 'duplicate' run_id
--       | 'sweep': a deadline passed unrecorded; sweep, then call again
--       | 'slot' s: the arrival is for slot s, which the plan lacks
--       | 'limited' ms: over the monitor's rate limit; retry in ms
--       Not an array: Redis 6 puts every array reply in a reply block of
--       its own and writes each block with a write(2) of its own, so the
--       ~20 check-ins it ran in one turn of its event loop cost ~20 system
--       calls; texts share one buffer and one write.
-- Nothing is written unless the reply is 'ok'.
-- Cost: every redis.call costs about a microsecond of Redis's one core
-- beyond its command's own work (more for a write, which is propagated to
-- the AOF and replicas), so the state hash is read once (HMGET) and
-- written once (HSET) at the end; `st` is what it held, `put` what changes.
-- A Lua number passed to redis.call is formatted by printf's float code
-- (and a score parsed back by strtod): constant counts are passed as
-- strings ('1'), times as the strings already made (now_s).
local state, runs, tmo, closed, counters = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local history, logs, logids, meta, due = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
-- The binary arguments' sizes, checked before anything is read or written
-- (struct.unpack would read a short string as other numbers, not fail).
if #ARGV[1] ~= 64 or #ARGV[3] < 32 or #ARGV[3] % 16 ~= 0 then
  error('cronmon: record.lua takes 8 doubles of settings and 4 + 2n doubles of check-in numbers')
end
local grace, miss_after, max_runtime, min_runtime, fthr, rthr, rate_count, rate_window =
  struct.unpack('<dddddddd', ARGV[1])
if max_runtime < 0 then max_runtime = nil end
if min_runtime <= 0 then min_runtime = nil end
local monitor, a, lim = ARGV[2], cjson.decode(ARGV[4]), LIMITS
-- The plan is read where it lies in `numbers`: now, anchored, the first
-- (slot, next slot), then the candidates' pairs from index 5 on (no table
-- per pair: every table a check-in makes is also work for Lua's collector).
local numbers = {struct.unpack('<' .. string.rep('d', #ARGV[3] / 8), ARGV[3])}
local now, anchored = numbers[1], numbers[2] == 1
-- (The last value struct.unpack returns is where it stopped, not a number of the plan.)
local last_candidate = #numbers - 2
local log_body = ARGV[5]
local kind, run_id = a.kind, a.run_id or ''
local now_s = fmt(now)
local exit_code, reported_duration = a.exit_code, a.duration
local history_cap, log_cap = lim.history, lim.logs
local meta_cap, open_cap, closed_cap = lim.meta_keys, lim.open_runs, lim.closed_runs
local generated_run_id = a.generated_run_id

-- (Tables made by a constructor are made at their size; one filled field
-- by field is rehashed at every power of two it passes.)
local st
do
  local stored = redis.call('HMGET', state, 'next', 'acc', 'seq', 'v', 'first', 'cbad', 'cgood', 'last_exit')
  st = {next = stored[1], acc = stored[2], seq = stored[3], v = stored[4], first = stored[5], cbad = stored[6],
        cgood = stored[7], last_exit = stored[8]}
end

-- Outcomes are applied in time order: a deadline that passed before this
-- check-in must be recorded as missed first. The caller sweeps and retries.
local expected = num(st.next)
if expected and expected + miss_after <= now then return 'sweep' end

local completes = (kind == 'success' or kind == 'fail' or kind == 'warning')
-- A retried start or completion for a run id we already have changes nothing.
if run_id ~= '' then
  if kind == 'start' and (redis.call('HEXISTS', runs, run_id) == 1 or redis.call('ZSCORE', closed, run_id)) then
    return 'duplicate\n' .. run_id
  end
  if completes and redis.call('ZSCORE', closed, run_id) then return 'duplicate\n' .. run_id end
end
-- A check-in retried with the idempotency key of one already recorded
-- (within the window) changes nothing either, whatever its kind.
local idempotency_key = a.idempotency_key
if idempotency_key then
  local at = num(redis.call('ZSCORE', KEYS[16], idempotency_key))
  if at and at > now - lim.idempotency_window then return 'duplicate\n' .. run_id end
end

-- The open runs (HGETALL), read at most once while they do not change.
local open_runs = nil
local function all_runs()
  if open_runs == nil then open_runs = redis.call('HGETALL', runs) end
  return open_runs
end

-- Which open run a completion closes: the one with its run id, else the
-- newest. A start, or a completion that closes nothing, is an arrival.
local closing, abandoned_start = nil, nil
if completes then
  if run_id ~= '' then
    if redis.call('HEXISTS', runs, run_id) == 1 then closing = run_id
    else abandoned_start = num(redis.call('ZSCORE', KEYS[15], run_id)) end
  else
    local all, newest_at = all_runs(), nil
    for i = 1, #all, 2 do
      local s = cjson.decode(all[i + 1]).s
      if newest_at == nil or s > newest_at then closing, newest_at = all[i], s end
    end
  end
end
local arrival = (kind == 'start') or (completes and closing == nil and abandoned_start == nil)

-- The slot an arrival accounts for: with an interval schedule, itself;
-- else the first slot not yet accounted for, if the arrival is at most
-- `grace` early for it (an earlier one is an extra run and accounts for
-- nothing); before the first arrival, the plan's best guess.
local target, target_next = nil, nil
if arrival then
  if anchored or expected == nil then
    target, target_next = numbers[3], numbers[4]
  elseif expected <= now + grace then
    for i = 5, last_candidate, 2 do
      if math.abs(numbers[i] - expected) < 0.5 then target, target_next = numbers[i], numbers[i + 1] end
    end
    if target == nil then return 'slot\n' .. fmt(expected) end
  end
end

-- Rate limit last among the checks, so a call retried after 'sweep' or
-- 'slot' is counted once. Fixed window; a refused check-in changes nothing
-- but the counter.
local limit = rate_count
if limit > 0 then
  local used = redis.call('INCR', KEYS[11])
  if used == 1 then redis.call('PEXPIRE', KEYS[11], math.floor(rate_window * 1000)) end
  if used > limit then
    local ttl = redis.call('PTTL', KEYS[11])
    if ttl < 0 then redis.call('PEXPIRE', KEYS[11], math.floor(rate_window * 1000)); ttl = rate_window * 1000 end
    return 'limited\n' .. string.format('%d', ttl)
  end
end

local seq = (num(st.seq) or 0) + 1
-- What the state hash gets, written once at the end. Made at the size a
-- completion fills (the fields named nil are set below, when they are).
local put = {seq = seq, v = (num(st.v) or 0) + 1, last = now_s, first = nil, acc = nil, next = nil,
             last_success = nil, last_failure = nil, last_outcome = nil, cbad = nil, cgood = nil,
             alerting = nil, last_bad = nil, last_exit = nil, last_duration = nil}
-- Check-ins are counted by kind ('c:<kind>'), a completion's together
-- with its outcome in one field ('c:<kind>:<outcome>', below): one write
-- for both counts (store._parse_facts adds them up).
if not completes then redis.call('HINCRBY', counters, 'c:' .. kind, '1') end
-- A log event says nothing about the job running (Healthchecks: /log does
-- not change the status), so it does not end the monitor's "new" state.
if kind ~= 'log' and not st.first then put.first = now_s end
local entry = {seq = seq, t = now, kind = kind, run = nil, outcome = nil, ip = nil, ua = nil, duration = nil}
if a.annotations then entry.ann = a.annotations end
if a.extra then
  for k, v in pairs(a.extra) do entry[k] = v end
end
if a.message then entry.message = a.message end
if exit_code then entry.exit_code = exit_code end

local function drop_run(id)
  redis.call('HDEL', runs, id)
  redis.call('ZREM', tmo, id)
  open_runs = nil
end

local function arrive()
  if target then
    local acc = num(st.acc)
    if acc == nil or target > acc then
      put.acc, put.next = fmt(target), fmt(target_next)
    end
  end
  -- Runs that already timed out are abandoned once the job runs again
  -- (so the monitor is no longer stuck). One with a client run id is
  -- remembered: when it finally finishes, its duration and outcome count.
  local all = all_runs()
  for i = 1, #all, 2 do
    local run = cjson.decode(all[i + 1])
    if run.t == 1 then
      if run.a ~= 1 then
        redis.call('ZADD', KEYS[15], run.s, all[i])
        redis.call('ZREMRANGEBYRANK', KEYS[15], 0, -closed_cap - 1)
      end
      drop_run(all[i])
    end
  end
end

-- The recently closed runs, for telling a retried completion (or start)
-- from a new one: those with a client's run id only. An id made here
-- (a plain ping's, or a start's without one) reaches no client to retry
-- with (a ping answers "OK"), so remembering it would cost every plain
-- ping a sorted-set write for nothing (~4% of Redis's instructions a
-- ping). Trimmed to closed_cap at every 16th check-in (by seq), not at each
-- (a write, propagated to the AOF): between trims at most 15 more wait,
-- which only remembers those runs a little longer.
local function close_recent(id)
  redis.call('ZADD', closed, now_s, id)
  if seq % 16 == 0 then redis.call('ZREMRANGEBYRANK', closed, 0, -closed_cap - 1) end
end

local result_run, duration = '', nil
if kind == 'start' then
  local rid = run_id
  if rid == '' then
    rid = generated_run_id
    -- A new start without a run id replaces the previous one without a run
    -- id (the Healthchecks rule): the earlier one is forgotten, not failed.
    local all = all_runs()
    for i = 1, #all, 2 do
      if cjson.decode(all[i + 1]).a == 1 then drop_run(all[i]); entry.replaced = all[i] end
    end
  end
  arrive()
  redis.call('HSET', runs, rid, cjson.encode({s = now, a = (run_id == '') and 1 or 0, t = 0}))
  open_runs = nil
  if max_runtime then redis.call('ZADD', tmo, now + max_runtime, rid) end
  if redis.call('HLEN', runs) > open_cap then
    local all, oldest, oldest_at = redis.call('HGETALL', runs), nil, nil
    for i = 1, #all, 2 do
      local s = cjson.decode(all[i + 1]).s
      if oldest_at == nil or s < oldest_at then oldest, oldest_at = all[i], s end
    end
    drop_run(oldest); entry.evicted = oldest
  end
  put.last_start = now_s
  result_run = rid
elseif completes then
  local rid = closing
  -- Whether the run's id was generated here (no client sent one): such
  -- an id is not remembered among the closed runs, as no client retries
  -- with it (see close_recent).
  local generated = false
  duration = reported_duration
  if rid then
    local run = cjson.decode(redis.call('HGET', runs, rid))
    generated = run_id == '' and run.a == 1  -- (a client that sent the id may retry with it)
    drop_run(rid)
    if duration == nil then duration = now - run.s end
    entry.started = run.s
  elseif abandoned_start then
    -- The late end of a run given up after its timeout: not an arrival.
    redis.call('ZREM', KEYS[15], run_id)
    if duration == nil then duration = now - abandoned_start end
    entry.started = abandoned_start
  else
    arrive()  -- a completion with no start is itself the arrival
  end
  result_run = rid or run_id
  if result_run == '' then result_run, generated = generated_run_id, true end
  if not generated then close_recent(result_run) end
  if duration and duration < 0 then duration = 0 end
  local outcome, bad = a.outcome, a.bad
  -- min_runtime: a success that ran shorter did not do its job. Judged
  -- here because only the script knows a paired run's duration; what it
  -- becomes (short_outcome, short_bad) is decided in Python
  -- (rules.too_short_outcome). A completion of unknown duration is not judged.
  if a.short_outcome and min_runtime and duration and duration < min_runtime then
    outcome, bad = a.short_outcome, a.short_bad
    entry.too_short = min_runtime
  end
  entry.outcome = outcome
  if bad then put.last_failure = now_s else put.last_success = now_s end
  -- Every completion replaces the last exit code, with none when it
  -- reported none: an earlier run's 0 must not stand for this run's result.
  if exit_code then put.last_exit = exit_code elseif st.last_exit then redis.call('HDEL', state, 'last_exit') end
  if duration then
    entry.duration = duration
    put.last_duration = fmt(duration)
    local buckets, index = duration_buckets(), nil
    for i, bound in ipairs(buckets) do
      if duration <= bound then index = i; break end
    end
    redis.call('HINCRBY', counters, 'b:' .. (index or 'inf'), '1')
    redis.call('HINCRBYFLOAT', counters, 'dsum', duration)
    redis.call('HINCRBY', counters, 'dcount', '1')
  end
  redis.call('HINCRBY', counters, 'c:' .. kind .. ':' .. outcome, '1')
  outcome_fields(num(st.cbad), num(st.cgood), outcome, 1, bad, fthr, rthr, put)
  count_uptime(KEYS[12], outcome, '1', now)
else
  result_run = run_id
end
if result_run ~= '' then entry.run = result_run end

if log_body ~= '' then
  redis.call('HSET', logs, seq, log_body)
  redis.call('RPUSH', logids, seq)
  while redis.call('LLEN', logids) > log_cap do
    redis.call('HDEL', logs, redis.call('LPOP', logids))
  end
  entry.log = seq
  if a.log_truncated then entry.log_truncated = true end
end

if a.meta then
  for k, v in pairs(a.meta) do
    if redis.call('HEXISTS', meta, k) == 1 or redis.call('HLEN', meta) < meta_cap then
      redis.call('HSET', meta, k, fmt(v))
    else
      entry.meta_dropped = true
    end
  end
end

if a.probe_code then
  -- An active check's result is also the monitor's latest probe result.
  entry.status_code = a.probe_code
  put.probe_t, put.probe_ok = now_s, (kind == 'fail') and 0 or 1
  put.probe_dur, put.probe_code = reported_duration and fmt(reported_duration) or '0', a.probe_code
end

if idempotency_key then
  redis.call('ZADD', KEYS[16], now, idempotency_key)
  redis.call('ZREMRANGEBYSCORE', KEYS[16], '-inf', '(' .. fmt(now - lim.idempotency_window))
  redis.call('ZREMRANGEBYRANK', KEYS[16], 0, -lim.idempotency_keys - 1)
end

local state_fields, n_state_fields = flatten(put)
redis.call('HSET', state, unpack(state_fields, 1, n_state_fields))
push_history(history, entry, history_cap)
-- open_runs, if still held, is the runs hash as it is now (every change
-- to it drops the copy): empty means no run timeout to look up.
update_due(state, tmo, due, monitor, miss_after, num(put.next or st.next), open_runs ~= nil and #open_runs == 0)
mark_changed(KEYS[13], KEYS[14], monitor)
return 'ok\n' .. fmt(seq) .. '\n' .. (duration and fmt(duration) or '') .. '\n' .. result_run
