-- gateway_charge.lua: the simulated gateway's ledger. The first result recorded for an idempotency
-- key is the result for ever: a retry never charges twice.
-- KEYS[1] ledger (key -> result)  KEYS[2] charges (order id -> successful charges)  KEYS[3] stats
-- ARGV[1] now (ms)  ARGV[2] count n
-- then 5 per call: idempotency key, order id, amount (cents), currency, outcome (ok|declined)
-- Returns one string per call: "<outcome>:<amount>:<currency>:<ms>" as first recorded.
local now, n = ARGV[1], tonumber(ARGV[2])

-- include: hash_batch

local keys = {}
for i = 1, n do
  keys[i] = ARGV[2 + (i - 1) * 5 + 1]
end
local out = hmget_all(KEYS[1], keys)
local recorded = {}
local fresh = {}
local charged, charged_orders = {}, {}
for i = 1, n do
  local key = keys[i]
  if not out[i] then
    local rec = recorded[key]
    if not rec then
      local b = 2 + (i - 1) * 5
      local oid, amount, currency, outcome = ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
      rec = outcome .. ":" .. amount .. ":" .. currency .. ":" .. now
      recorded[key] = rec
      fresh[#fresh + 1] = key
      fresh[#fresh + 1] = rec
      if outcome == "ok" then
        if not charged[oid] then
          charged[oid] = 0
          charged_orders[#charged_orders + 1] = oid
        end
        charged[oid] = charged[oid] + 1
      end
    end
    out[i] = rec
  end
end
hset_all(KEYS[1], fresh)
if #charged_orders > 0 then
  local before = hmget_all(KEYS[2], charged_orders)
  local after = {}
  for i, oid in ipairs(charged_orders) do
    after[#after + 1] = oid
    after[#after + 1] = tostring(tonumber(before[i] or "0") + charged[oid])
  end
  hset_all(KEYS[2], after)
end
redis.call("HINCRBY", KEYS[3], "calls", n)
redis.call("HINCRBY", KEYS[3], "recorded", #fresh / 2)
return out
