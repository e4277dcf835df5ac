-- load_batch.lua: read one batch's leads in a single command (read-only).
--
-- Guarantees: a consistent snapshot of every lead in the batch (a script runs atomically), and
-- one round trip with one reply, instead of two pipelined commands per lead whose per-command
-- client overhead dominated the batch time.
--
-- KEYS[1..n]      lead state hashes {v = version, s = state JSON}
-- KEYS[n+1..2n]   per-lead sets of seen event ids
-- ARGV[1]         JSON array of n arrays: the batch's event ids for each lead
-- Returns         n replies {version or false, state or false, {1/0 per event id}}
local ids = cjson.decode(ARGV[1])
local n = #ids
local out = {}
for i = 1, n do
  local vs = redis.call('HMGET', KEYS[i], 'v', 's')
  local flags = {}
  for j = 1, #ids[i], 1000 do
    local chunk = redis.call('SMISMEMBER', KEYS[n + i], unpack(ids[i], j, math.min(j + 999, #ids[i])))
    for _, flag in ipairs(chunk) do
      flags[#flags + 1] = flag
    end
  end
  out[i] = {vs[1], vs[2], flags}
end
return out
