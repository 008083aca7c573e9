-- One monitor's facts, read atomically: a script rather than MULTI/EXEC,
-- so reads of many monitors batch into one pipeline like check-ins do
-- (and on a cluster each goes straight to its slot's node).
-- KEYS: 1 state, 2 runs, 3 counters, 4 meta
-- Returns the four hashes as flat field/value lists, in that order.
return {
  redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[4]),
}
