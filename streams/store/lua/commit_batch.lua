-- commit_batch.lua: write one batch's lead states (with their dedupe memory), outputs,
-- reminders, KPI counts and input offsets.
--
-- Guarantees:
--   * all or nothing (a Lua script runs atomically in Redis);
--   * compare-and-set per lead: a lead is written only if its version is still the one the
--     batch read; if any lead changed, nothing is written and the 1-based indexes of the
--     conflicting leads are returned (this also fences off a worker that lost its partitions
--     in a rebalance but is still finishing a batch);
--   * outputs (handoffs, lifecycle events, alerts) are written to the outbox in the same step
--     as the state that caused them, so a crash before Kafka acknowledged them cannot lose them;
--   * SLA reminders are added and removed in the same step as the clock they belong to, so the
--     sweeper never sees a reminder for a clock state that was not written.
-- No scoring or lifecycle rule lives here: the worker computed everything in Python.
--
-- KEYS[1..n]          lead state hashes  {v = version, s = state, dedupe memory included}
-- then one key per outbox entry (hash: output id -> record JSON),
-- then one key per reminder to add, then one key per reminder to remove (sorted sets),
-- then one key per KPI count (hash: field -> count), then one per KPI sample (sorted set),
-- then the input offsets hash (partition -> next offset to read), and last the generation record
-- (which key space of lead states is live).
-- ARGV[1]  MessagePack {"gen": generation written, "leads": [{"v": read version, "s": state}],
--                "outbox": [{"id": output id, "r": record JSON}],
--                "add": [{"m": member, "at": due epoch ms}], "remove": [member, ...],
--                "count": [{"f": field, "n": amount}], "sample": [{"m": member, "s": seconds}],
--                "offsets": [{"p": partition, "from": expected next offset or -1 for none, "to": next}]}
-- Offsets: the batch's input offsets advance in the same step as the states computed from its
-- records, and only from where the batch started; if Redis holds another offset (restored from
-- an older copy, emptied, or moved on by another worker), nothing is written and
-- {-2, partition, stored offset or -1, ...} is returned so the worker resumes from Redis.
-- KPI counts are written with the state change that caused them, so they never drift from it.
local batch = cmsgpack.unpack(ARGV[1])
local n = #batch.leads

-- Fence: a rescore switched (or is switching) the live key space; the caller must follow it.
local generation = KEYS[#KEYS]
local active = tonumber(redis.call('HGET', generation, 'active') or '0')
local state = redis.call('HGET', generation, 'state') or 'active'
if active ~= batch.gen or state ~= 'active' then
  return {-1}
end

local offsets = KEYS[#KEYS - 1]
local moved = {}
for _, o in ipairs(batch.offsets) do
  local stored = tonumber(redis.call('HGET', offsets, tostring(o.p)) or '-1')
  if stored ~= o['from'] then
    moved[#moved + 1] = o.p
    moved[#moved + 1] = stored
  end
end
if #moved > 0 then
  table.insert(moved, 1, -2)
  return moved
end

local conflicts = {}
for i = 1, n do
  local current = tonumber(redis.call('HGET', KEYS[i], 'v') or '0')
  if current ~= batch.leads[i].v then
    conflicts[#conflicts + 1] = i
  end
end
if #conflicts > 0 then
  return conflicts
end

for i = 1, n do
  local lead = batch.leads[i]
  redis.call('HSET', KEYS[i], 'v', lead.v + 1, 's', lead.s)
end

local k = n
for j = 1, #batch.outbox do
  redis.call('HSET', KEYS[k + j], batch.outbox[j].id, batch.outbox[j].r)
end
k = k + #batch.outbox
for j = 1, #batch.add do
  redis.call('ZADD', KEYS[k + j], batch.add[j].at, batch.add[j].m)
end
k = k + #batch.add
for j = 1, #batch.remove do
  redis.call('ZREM', KEYS[k + j], batch.remove[j])
end
k = k + #batch.remove
for j = 1, #batch.count do
  redis.call('HINCRBY', KEYS[k + j], batch.count[j].f, batch.count[j].n)
end
k = k + #batch.count
for j = 1, #batch.sample do
  redis.call('ZADD', KEYS[k + j], batch.sample[j].s, batch.sample[j].m)
end
for _, o in ipairs(batch.offsets) do
  redis.call('HSET', offsets, tostring(o.p), o.to)
end
return {}
