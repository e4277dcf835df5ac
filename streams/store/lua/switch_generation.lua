-- switch_generation.lua: hand the live lead states over to a rescored key space.
--
-- Guarantees: each phase is atomic. 'begin' succeeds only if the expected generation is live
-- and no other switch is under way; from then on every worker's commit is fenced (it waits).
-- 'finish' makes the new generation live and, in the same step, releases the outputs and KPI
-- counts the rescore held back (handoffs of leads that qualify under the new rules), so they
-- exist exactly when the states that caused them do. 'abort' ends a switch without changes.
--
-- KEYS[1]        the generation record (hash: active, state, next, rules_version, rules)
-- KEYS[2..]      for 'finish': pairs of (held outputs hash, outbox hash) per partition, then
--                the held KPI counts hash (fields "YYYY-MM-DD|field")
-- ARGV[1]        'begin' | 'finish' | 'abort';  ARGV[2] expected live generation;
-- ARGV[3]        new generation; for 'finish' also ARGV[4] rules version, ARGV[5] rules JSON,
--                ARGV[6] KPI key prefix ("<prefix>kpi:")
local record = KEYS[1]
local mode = ARGV[1]
local active = tonumber(redis.call('HGET', record, 'active') or '0')
local state = redis.call('HGET', record, 'state') or 'active'
if active ~= tonumber(ARGV[2]) then
  return redis.error_reply('live generation is ' .. active .. ', not ' .. ARGV[2])
end
if mode == 'begin' then
  if state ~= 'active' then
    return redis.error_reply('another rescore is switching (next ' .. tostring(redis.call('HGET', record, 'next')) .. ')')
  end
  redis.call('HSET', record, 'state', 'switching', 'next', ARGV[3])
  return 1
end
if state ~= 'switching' or redis.call('HGET', record, 'next') ~= ARGV[3] then
  return redis.error_reply('no switch to generation ' .. ARGV[3] .. ' is under way')
end
if mode == 'abort' then
  redis.call('HSET', record, 'state', 'active')
  redis.call('HDEL', record, 'next')
  return 1
end
local pairs_end = #KEYS - 1
for i = 2, pairs_end, 2 do
  local held = redis.call('HGETALL', KEYS[i])
  for j = 1, #held, 2 do
    redis.call('HSET', KEYS[i + 1], held[j], held[j + 1])
  end
  redis.call('DEL', KEYS[i])
end
local counts = redis.call('HGETALL', KEYS[#KEYS])
for j = 1, #counts, 2 do
  local sep = string.find(counts[j], '|', 1, true)
  local day, field = string.sub(counts[j], 1, sep - 1), string.sub(counts[j], sep + 1)
  redis.call('HINCRBY', ARGV[6] .. day, field, tonumber(counts[j + 1]))
end
redis.call('DEL', KEYS[#KEYS])
redis.call('HSET', record, 'active', ARGV[3], 'state', 'active', 'rules_version', ARGV[4], 'rules', ARGV[5])
redis.call('HDEL', record, 'next')
return 1
