-- gateway_charge.lua: the simulated gateway's ledger. The first result recorded for an idempotency
-- key is the result for ever: a retry never charges twice.
-- KEYS[1] ledger (key -> result)  KEYS[2] charges (order id -> successful charges)  KEYS[3] stats
-- ARGV[1] now (ms)  ARGV[2] count n
-- then 5 per call: idempotency key, order id, amount (cents), currency, outcome (ok|declined)
-- Returns one string per call: "<outcome>:<amount>:<currency>:<ms>" as first recorded.
local now, n = ARGV[1], tonumber(ARGV[2])
local out = {}
local fresh = 0
for i = 1, n do
  local b = 2 + (i - 1) * 5
  local key, oid, amount, currency, outcome =
    ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local rec = redis.call("HGET", KEYS[1], key)
  if not rec then
    rec = outcome .. ":" .. amount .. ":" .. currency .. ":" .. now
    redis.call("HSET", KEYS[1], key, rec)
    if outcome == "ok" then
      redis.call("HINCRBY", KEYS[2], oid, 1)
    end
    fresh = fresh + 1
  end
  out[i] = rec
end
redis.call("HINCRBY", KEYS[3], "calls", n)
redis.call("HINCRBY", KEYS[3], "recorded", fresh)
return out
