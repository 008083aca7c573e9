-- Read one monitor's event history filtered in Redis, newest first: only
-- the page asked for crosses the network (the APIs filter by kind, run id,
-- event seq and a `before` cursor).
-- KEYS: 1 history
-- ARGV: 1 the filter (json object): kinds (array), run, seq, before,
--         offset, limit; absent fields do not filter; cap, the history's
--         length (entries past it wait to be trimmed: push_history)
-- Returns {more (1 if matching events follow the page, else 0), event...}
local f = cjson.decode(ARGV[1])
local kinds = nil
if f.kinds then
  kinds = {}
  for _, kind in ipairs(f.kinds) do kinds[kind] = true end
end
local offset, limit = f.offset or 0, f.limit
local out, skipped = {0}, 0
local length, chunk = math.min(redis.call('LLEN', KEYS[1]), f.cap), 100
for first = 0, length - 1, chunk do
  for _, raw in ipairs(redis.call('LRANGE', KEYS[1], first, math.min(first + chunk, length) - 1)) do
    local e = cjson.decode(raw)
    if (f.before == nil or e.seq < f.before) and (f.seq == nil or e.seq == f.seq)
      and (kinds == nil or kinds[e.kind]) and (f.run == nil or e.run == f.run) then
      if skipped < offset then
        skipped = skipped + 1
      elseif #out - 1 < limit then
        out[#out + 1] = raw
      else
        out[1] = 1
        return out
      end
    end
  end
end
return out
