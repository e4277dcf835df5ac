-- One routing decision, recorded with the queue's rotation in one step (record_routing.lua).
-- KEYS[1] the queue's ledger (JSON), KEYS[2] the day's decisions (hash: handoff id -> JSON).
-- ARGV[1] handoff id, ARGV[2] the ledger the decision was computed from ('' = none yet),
-- ARGV[3] the ledger after it, ARGV[4] the decision, ARGV[5] seconds the decisions are kept.
-- Returns {'decided', json} when this handoff was routed before (a batch folded again, another
-- worker), {'conflict'} when the ledger moved since it was read (compute again), {'ok'}.
local prior = redis.call('HGET', KEYS[2], ARGV[1])
if prior then
  return {'decided', prior}
end
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[2] then
  return {'conflict'}
end
if ARGV[3] ~= ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[3])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
return {'ok'}
