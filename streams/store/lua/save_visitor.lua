-- One anonymous visitor's state, written as a compare-and-set on its version (save_visitor.lua).
-- KEYS[1] the visitor (hash: v = version, s = state JSON: the claiming lead and kept events).
-- ARGV[1] the version the state was computed from ('0': none, or expired), ARGV[2] the new
-- state, ARGV[3] milliseconds to keep it (the rules' identity.retention, from this write).
-- Guarantees: a worker that lost the visitor's partition in a rebalance but is still finishing
-- a batch, or a batch folded twice, never overwrites a newer state (returns 0: read it again and
-- fold again). Holds no rule: who claims a visitor is decided in streams/core/identity.py.
local v = redis.call('HGET', KEYS[1], 'v') or '0'
if v ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'v', tostring(tonumber(v) + 1), 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
