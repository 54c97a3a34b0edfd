-- gateway_charge.lua: the simulated gateway's ledger. The first result recorded for an idempotency
-- key is the result for ever: a retry never charges twice. A key is charged exactly when its first
-- result is recorded as ok, so no per-order counter is kept: charges are counted from the ledger
-- (streamproc.gateway.successful_charges).
-- KEYS[1] ledger (key -> result)  KEYS[2] stats
-- ARGV[1] now (ms)  ARGV[2] count n
-- then 4 per call: idempotency key, amount (cents), currency, outcome (ok|declined)
-- Returns one string per call: "<outcome>:<amount>:<currency>:<ms>" as first recorded.
local now, n = ARGV[1], tonumber(ARGV[2])

-- include: hash_batch

local keys = {}
for i = 1, n do
  keys[i] = ARGV[2 + (i - 1) * 4 + 1]
end
local out = hmget_all(KEYS[1], keys)
local recorded = {}
local fresh = {}
for i = 1, n do
  local key = keys[i]
  if not out[i] then
    local rec = recorded[key]
    if not rec then
      local b = 2 + (i - 1) * 4
      local amount, currency, outcome = ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
      rec = outcome .. ":" .. amount .. ":" .. currency .. ":" .. now
      recorded[key] = rec
      fresh[#fresh + 1] = key
      fresh[#fresh + 1] = rec
    end
    out[i] = rec
  end
end
hset_all(KEYS[1], fresh)
redis.call("HINCRBY", KEYS[2], "calls", n)
redis.call("HINCRBY", KEYS[2], "recorded", #fresh / 2)
return out
