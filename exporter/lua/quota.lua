-- Take or give back an API monitor's places in its quota sets where the
-- sets cannot be in define.lua's slot (Redis Cluster: they live under the
-- shared tag, the monitor in its shard). On one server define.lua checks
-- them itself, in the same script as the definition.
-- KEYS: the quota sets (ids of the API monitors each counts)
-- ARGV: 1 the change (json object): monitor, mode (take|give), limits
--       (take: one per set, in KEYS order; 0: none)
-- Returns {'ok', taken_1, ...} (1: the id was added to that set now, 0: it
-- was already in it) | {'quota', i, used}: the i-th set is full (checked
-- before any write, so two creates racing for the last place cannot both
-- take it, and a refusal changes nothing)
local p = cjson.decode(ARGV[1])
need(p, {monitor = 'string', mode = 'string'})
if p.mode == 'take' then need(p, {limits = 'table'}) end
local id, mode = p.monitor, p.mode
if mode == 'give' then
  for i = 1, #KEYS do redis.call('SREM', KEYS[i], id) end
  return {'ok'}
end
for i = 1, #KEYS do
  local limit = p.limits[i]
  if limit > 0 and redis.call('SISMEMBER', KEYS[i], id) == 0 then
    local used = redis.call('SCARD', KEYS[i])
    if used >= limit then return {'quota', i, used} end
  end
end
local reply = {'ok'}
for i = 1, #KEYS do reply[#reply + 1] = redis.call('SADD', KEYS[i], id) end
return reply
