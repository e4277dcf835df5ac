-- load_batch.lua: read one batch's leads in a single command (read-only).
--
-- Guarantees: a consistent snapshot of every lead in the batch (a script runs atomically), and
-- one round trip with one reply. Each lead's state carries its own dedupe memory (see
-- streams/store/codec.py), so nothing else is read. A lead whose version is the one the caller
-- already holds (its in-memory copy, streams/store/cache.py) is answered with the version only.
--
-- KEYS[1..n]      lead state hashes {v = version, s = state}
-- ARGV[1]         MessagePack array of n versions the caller holds (-1: none)
-- Returns         n replies: {version} when unchanged, else {version or false, state or false}
local known = cmsgpack.unpack(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HGET', KEYS[i], 'v')
  if v and tonumber(v) == known[i] then
    out[i] = {v}
  else
    out[i] = redis.call('HMGET', KEYS[i], 'v', 's')
  end
end
return out
