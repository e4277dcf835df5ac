-- load_batch.lua: read one batch's leads in a single command (read-only).
--
-- Guarantees: a consistent snapshot of every lead in the batch (a script runs atomically), and
-- one round trip with one reply, instead of a command per lead whose per-command client
-- overhead dominated the batch time. Each lead's state carries its own dedupe memory (see
-- streams/store/codec.py), so nothing else is read.
--
-- KEYS[1..n]      lead state hashes {v = version, s = state}
-- Returns         n replies {version or false, state or false}
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HMGET', KEYS[i], 'v', 's')
end
return out
