-- wrk script for bench/compare.py: PUT a group of 5 samples to the
-- Pushgateway at /metrics/job/j<i>, spread over groups j0..j(N-1).
-- Env: COMPARE_GROUPS (N). Each wrk thread starts at a different group.
local groups = tonumber(os.getenv("COMPARE_GROUPS") or "1000")
local body = "m1 1\nm2 2\nm3 3\nm4 4\nm5 5\n"
local counter = 0
local threads = 0

function setup(thread)  -- runs in wrk's main Lua state, once per thread
  thread:set("offset", threads * 7919)
  threads = threads + 1
end

function init(args)  -- runs in the thread's own Lua state
  counter = offset or 0
end

function request()
  counter = counter + 1
  return wrk.format("PUT", string.format("/metrics/job/j%d", counter % groups), nil, body)
end
