-- Make the probe schedule match the active monitors a process knows.
-- KEYS: 1 probes hash (monitor id -> fingerprint json with the interval "i"),
--       2 probe schedule zset (monitor id -> when its next check is due)
-- ARGV: 1 json list of [monitor id, fingerprint, first due]
--       2 (optional) json list of monitor ids to drop: a partial update
--         (only the listed ids change; without it, the list is the whole
--         set and every other entry is dropped)
-- A monitor whose fingerprint (url, interval, thresholds) is unchanged
-- keeps its place in the schedule, so replicas syncing the same config
-- change nothing; a new or changed one starts at its first due time; one
-- no longer active is dropped. Returns the number of changes.
local probes, schedule = KEYS[1], KEYS[2]
local wanted = cjson.decode(ARGV[1])
local dropped = ARGV[2] and cjson.decode(ARGV[2])
for i, item in ipairs(wanted) do  -- checked before the first write
  if type(item[1]) ~= 'string' or type(item[2]) ~= 'string' or type(item[3]) ~= 'number' then
    error('cronmon: probe ' .. i .. ' must be [monitor id, fingerprint, first due]')
  end
end
if dropped then
  if type(dropped) ~= 'table' then error('cronmon: the ids to drop must be a list') end
  for i, id in ipairs(dropped) do
    if type(id) ~= 'string' then error('cronmon: id to drop ' .. i .. ' must be a string') end
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
local gone = dropped or redis.call('HKEYS', probes)
for _, id in ipairs(gone) do
  if not keep[id] and redis.call('HDEL', probes, id) == 1 then
    redis.call('ZREM', schedule, id)
    changes = changes + 1
  end
end
return changes
