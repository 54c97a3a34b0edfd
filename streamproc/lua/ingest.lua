-- ingest.lua: create a batch of orders and enqueue each for the reserve stage, atomically per batch.
-- An order whose hash exists is a duplicate, unless force is set and it ended failed, rolled_back or
-- dead_lettered: then its attempt is bumped and it is re-submitted.
-- KEYS[1]  reserve stream          KEYS[2]  state counts hash   KEYS[3] today's counters hash
-- KEYS[3+i] order hash of the i-th order
-- ARGV[1]  now (ms)   ARGV[2]  force ("1" or "0")   ARGV[3] count n
-- ARGV[3+2i-1] order id of the i-th order,  ARGV[3+2i]  its encoded payload
-- Returns a string with one char per order: n = new, r = re-submitted, d = duplicate.
local now, force, n = ARGV[1], ARGV[2] == "1", tonumber(ARGV[3])
local resubmittable = { failed = true, rolled_back = true, dead_lettered = true }
local out = {}
local created = 0
for i = 1, n do
  local key, oid, payload = KEYS[3 + i], ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  local state = redis.call("HGET", key, "s")
  if not state then
    redis.call("HSET", key, "s", "pending", "a", "1", "k", "reserve", "d", payload,
      "c", now, "u", now, "h", "pending@" .. now)
    redis.call("HINCRBY", KEYS[2], "pending", 1)
    redis.call("XADD", KEYS[1], "*", "o", oid, "a", "1", "s", "pending", "d", payload)
    created = created + 1
    out[i] = "n"
  elseif force and resubmittable[state] then
    local attempt = redis.call("HINCRBY", key, "a", 1)
    local history = redis.call("HGET", key, "h") or ""
    local stored = redis.call("HGET", key, "d")
    redis.call("HSET", key, "s", "pending", "k", "reserve", "u", now,
      "h", history .. ";pending@" .. now)
    redis.call("HDEL", key, "p", "e")
    redis.call("HINCRBY", KEYS[2], state, -1)
    redis.call("HINCRBY", KEYS[2], "pending", 1)
    redis.call("XADD", KEYS[1], "*", "o", oid, "a", tostring(attempt), "s", "pending", "d", stored)
    out[i] = "r"
  else
    out[i] = "d"
  end
end
if created > 0 then
  -- "Orders today" for /api/stats; the counters outlive the day by a week for late readers.
  redis.call("HINCRBY", KEYS[3], "orders", created)
  redis.call("EXPIRE", KEYS[3], 691200, "NX")
end
return table.concat(out)
