-- Make the probe schedule match the active monitors a process knows.
-- KEYS: 1 probes hash (monitor id -> fingerprint json with the interval "i"),
--       2 probe schedule zset (monitor id -> when its next check is due)
-- ARGV: 1 json list of [monitor id, fingerprint, first due]
-- A monitor whose fingerprint (url, interval, thresholds) is unchanged
-- keeps its place in the schedule, so replicas syncing the same config
-- change nothing; a new or changed one starts at its first due time; one
-- no longer active is dropped. Returns the number of changes.
local probes, schedule = KEYS[1], KEYS[2]
local wanted = cjson.decode(ARGV[1])
for i, item in ipairs(wanted) do  -- checked before the first write
  if type(item[1]) ~= 'string' or type(item[2]) ~= 'string' or type(item[3]) ~= 'number' then
    error('cronmon: probe ' .. i .. ' must be [monitor id, fingerprint, first due]')
  end
end
local keep, changes = {}, 0
for _, item in ipairs(wanted) do
  local id, fp, first = item[1], item[2], item[3]
  keep[id] = true
  if redis.call('HGET', probes, id) ~= fp then
    redis.call('HSET', probes, id, fp)
    redis.call('ZADD', schedule, first, id)
    changes = changes + 1
  end
end
for _, id in ipairs(redis.call('HKEYS', probes)) do
  if not keep[id] then
    redis.call('HDEL', probes, id)
    redis.call('ZREM', schedule, id)
    changes = changes + 1
  end
end
return changes
