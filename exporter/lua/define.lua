-- Create, update or delete an API monitor's definition and bump the
-- definitions' revision, atomically (replicas reload when it changes).
-- KEYS: 1 definitions hash, 2 revision, 3 due index, 4 change feed,
--       5 change feed sequence, 6 definitions feed (id -> revision of its
--       latest change), 7 audit list, 8..7+q the owner's quota sets (ids
--       of the API monitors it counts), then the monitor's data keys
--       (deleted with it)
-- ARGV: 1 the change (json object): monitor, mode (create|update|delete),
--       definition (json text; create and update), audit (json text of the
--       audit entry; absent: none), audit_cap, quota_limits (one per quota
--       set, in KEYS order: the most ids each may hold on a create; 0: no
--       limit)
-- Returns {'ok', revision} | {'exists'} | {'missing'} | {'quota', i, used}:
-- the i-th quota set is full (checked before any write, so two creates
-- racing for the last place cannot both take it)
-- Everything is read and checked before the first write.
local p = cjson.decode(ARGV[1])
need(p, {monitor = 'string', mode = 'string', audit_cap = 'number', quota_limits = 'table'})
if p.mode ~= 'create' and p.mode ~= 'update' and p.mode ~= 'delete' then
  error('cronmon: argument mode must be create, update or delete, not ' .. p.mode)
end
if p.mode ~= 'delete' then need(p, {definition = 'string'}) end
local defs, rev, due, id, mode = KEYS[1], KEYS[2], KEYS[3], p.monitor, p.mode
local quotas = #p.quota_limits
local present = redis.call('HEXISTS', defs, id) == 1
if mode == 'create' and present then return {'exists'} end
if mode ~= 'create' and not present then return {'missing'} end
if mode == 'create' then
  for i = 1, quotas do
    local limit, used = p.quota_limits[i], redis.call('SCARD', KEYS[7 + i])
    if limit > 0 and used >= limit then return {'quota', i, used} end
  end
  for i = 1, quotas do redis.call('SADD', KEYS[7 + i], id) end
end
if mode == 'delete' then
  redis.call('HDEL', defs, id)
  redis.call('ZREM', due, id)
  for i = 1, quotas do redis.call('SREM', KEYS[7 + i], id) end
  redis.call('DEL', KEYS[7])
  for i = 8 + quotas, #KEYS do redis.call('DEL', KEYS[i]) end
else
  redis.call('HSET', defs, id, p.definition)
  if p.audit then
    redis.call('LPUSH', KEYS[7], p.audit)
    redis.call('LTRIM', KEYS[7], 0, p.audit_cap - 1)
  end
end
-- A deleted and re-created monitor must not show its old facts anywhere.
mark_changed(KEYS[4], KEYS[5], id)
-- Replicas load just the definitions that changed since their revision.
local revision = redis.call('INCR', rev)
redis.call('ZADD', KEYS[6], revision, id)
return {'ok', revision}
