-- Shared helpers, prepended to every cronmon script (see store.py).
-- Every script touches the keys of one hash slot only: a monitor's keys
-- and its shard of the cross-monitor indexes (see exporter/keyspace.py).

-- Full double precision: tostring() keeps only 14 significant digits.
-- A whole number (a count, a sequence number, a cron slot, a 0 streak)
-- is written by '%d', the same text as '%.17g' gives it, without printf's
-- float code (~0.5 µs of Redis's CPU each; a check-in formats several).
-- (A -0 becomes '0': the same number.)
local function fmt(value)
  if value >= 0 and value < 1e15 and value == math.floor(value) then
    return string.format('%d', value)
  end
  return string.format('%.17g', value)
end

-- A script's named argument table, checked before its first write: a
-- missing or mistyped field is an error that changes nothing (Redis keeps
-- the writes a failing script made before it failed).
local function need(args, fields)
  for name, kind in pairs(fields) do
    if type(args[name]) ~= kind then
      error('cronmon: argument ' .. name .. ' must be a ' .. kind .. ', not ' .. type(args[name]))
    end
  end
end

local function num(value)
  if value == false or value == nil or value == '' then return nil end
  return tonumber(value)
end

-- The threshold state after `n` outcomes of one kind: the state fields to
-- set, given the stored streaks (cbad, cgood; nil when absent), put in
-- `into` (a table of other fields to set) or a new table, and returned.
-- Whether the outcome is bad is the caller's to say (rules.BAD_OUTCOMES,
-- passed by the store); the flips mirror rules.after_outcomes, and
-- tests/test_rules.py checks that they agree.
local function outcome_fields(cbad, cgood, outcome, n, bad, fthr, rthr, into)
  local set = into or {}
  set.last_outcome = outcome
  -- (Constant values as their texts: flatten formats a number.)
  if bad then
    set.cbad, set.cgood, set.last_bad = (cbad or 0) + n, '0', outcome
    if set.cbad >= fthr then set.alerting = '1' end
  else
    set.cgood, set.cbad = (cgood or 0) + n, '0'
    if set.cgood >= rthr then set.alerting = '0' end
  end
  return set
end

-- A table's fields as HSET's field, value list, and its length (numbers
-- formatted by fmt: Redis would format them with printf's float code).
-- For unpack(list, 1, n). The list is made with room for 16 fields (Lua
-- 5.1 has no table.new; a list filled one by one is resized at every
-- power of two); more still fit, in a resized list.
local function flatten(fields)
  local list, n = {false, false, false, false, false, false, false, false, false, false, false, false, false,
                   false, false, false, false, false, false, false, false, false, false, false, false, false,
                   false, false, false, false, false, false}, 0
  for name, value in pairs(fields) do
    list[n + 1] = name
    list[n + 2] = type(value) == 'number' and fmt(value) or value
    n = n + 2
  end
  return list, n
end

-- Apply `n` outcomes of one kind to the counters and the threshold state.
local function apply_outcome(state, counters, outcome, n, bad, fthr, rthr)
  redis.call('HINCRBY', counters, 'o:' .. outcome, n)
  local streaks = redis.call('HMGET', state, 'cbad', 'cgood')
  local set = outcome_fields(num(streaks[1]), num(streaks[2]), outcome, n, bad, fthr, rthr)
  local list, n = flatten(set)
  redis.call('HSET', state, unpack(list, 1, n))
end

-- Keep the sweeper's deadline index exact: the monitor is due at the
-- earlier of its next deadline and its first pending run timeout.
-- `upcoming`: the state's next slot, if the caller has it (else read).
-- `no_runs`: true if the caller knows the monitor has no open run, so no
-- run timeout either (tmo holds open runs only: a run leaves both at once).
local function update_due(state, tmo, due, monitor, miss_after, upcoming, no_runs)
  local at = nil
  if upcoming == nil then upcoming = num(redis.call('HGET', state, 'next')) end
  if upcoming then at = upcoming + miss_after end
  local first = not no_runs and redis.call('ZRANGE', tmo, 0, 0, 'WITHSCORES')
  if first and first[2] then
    local t = tonumber(first[2])
    if at == nil or t < at then at = t end
  end
  if at then redis.call('ZADD', due, fmt(at), monitor) else redis.call('ZREM', due, monitor) end
end

-- Uptime statistics: outcomes counted per UTC hour (kept 48 hours) and per
-- UTC day (kept 31 days), so 24h / 7d / 30d figures stay exact however
-- short the capped event history is. Fields: h<hour>:<outcome>,
-- d<day>:<outcome>; `hour` remembers when old buckets were last pruned.
-- Callers count run outcomes and missed slots (rules.UPTIME_COLUMNS), not
-- timeouts: a timed-out run still ends in an outcome of its own.
-- Old buckets are pruned when a new hour's bucket is made (HINCRBY says
-- the count it made: n for a new field), not looked for on every count:
-- a new hour always makes one, and pruning is only about memory (readers
-- look at their window's buckets alone).
local UPTIME_HOURS, UPTIME_DAYS = 48, 31
local function count_uptime(uptime, outcome, n, now)
  local hour, day = math.floor(now / 3600), math.floor(now / 86400)
  -- ('%d': a number in a string otherwise goes through printf's float code.)
  local count = redis.call('HINCRBY', uptime, string.format('h%d:', hour) .. outcome, n)
  redis.call('HINCRBY', uptime, string.format('d%d:', day) .. outcome, n)
  if count ~= tonumber(n) then return end
  local pruned = tonumber(redis.call('HGET', uptime, 'hour') or '0')
  if hour > pruned then
    -- At most once an hour per monitor, over at most ~200 fields.
    redis.call('HSET', uptime, 'hour', hour)
    for _, name in ipairs(redis.call('HKEYS', uptime)) do
      local unit, index = string.match(name, '^([hd])(%d+):')
      if (unit == 'h' and tonumber(index) <= hour - UPTIME_HOURS)
        or (unit == 'd' and tonumber(index) <= day - UPTIME_DAYS) then
        redis.call('HDEL', uptime, name)
      end
    end
  end
end

-- The change feed: every script that changes what /metrics shows of a
-- monitor stamps it with the next feed sequence number, so each replica's
-- scrape cache asks "what changed since N" in one round trip.
local function mark_changed(feed, feed_seq, monitor)
  -- ('%d': a Lua number passed as is goes through printf's float code.)
  redis.call('ZADD', feed, string.format('%d', redis.call('INCR', feed_seq)), monitor)
end

-- The history holds the newest `cap` events, and up to a tenth more
-- waiting to be trimmed: LPUSH says the new length, and LTRIM runs once
-- per cap/10 pushes instead of on each (a write, propagated to the AOF,
-- on every check-in of a monitor whose history is full). Readers never
-- look past `cap` (store.py, history.lua).
local function push_history(history, entry, cap)
  if redis.call('LPUSH', history, cjson.encode(entry)) > cap + math.floor(cap / 10) then
    redis.call('LTRIM', history, 0, cap - 1)
  end
end
