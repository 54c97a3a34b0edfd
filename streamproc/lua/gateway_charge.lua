-- gateway_charge.lua: the simulated gateway's ledger. The first result recorded for an idempotency
-- key is the result for ever: a retry never charges twice. A key is charged exactly when its first
-- result is recorded as ok, so no per-order counter is kept: charges are counted from the ledger
-- (streamproc.gateway.successful_charges).
-- The ledger is kept in bucket hashes (lib/buckets.lua); results recorded before buckets stay in
-- the old single hash and are still found there.
-- KEYS[1] ledger written before buckets (key -> result)  KEYS[2] stats
-- KEYS[3..] the batch's ledger buckets
-- ARGV[1] now (ms)  ARGV[2] count n
-- then 5 per call: idempotency key, KEYS index of its bucket, amount (cents), currency,
-- outcome (ok|declined)
-- Returns one string per call: "<outcome>:<amount>:<currency>:<ms>" as first recorded.
local now, n = ARGV[1], tonumber(ARGV[2])

-- include: hash_batch
-- include: buckets

local keys, slots = {}, {}
for i = 1, n do
  local b = 2 + (i - 1) * 5
  keys[i] = ARGV[b + 1]
  slots[i] = tonumber(ARGV[b + 2])
end
local out = bucket_get(1, keys, slots)
local recorded = {}
local fresh = bucket_writes()
local count = 0
for i = 1, n do
  local key = keys[i]
  if not out[i] then
    local rec = recorded[key]
    if not rec then
      local b = 2 + (i - 1) * 5
      local amount, currency, outcome = ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
      rec = outcome .. ":" .. amount .. ":" .. currency .. ":" .. now
      recorded[key] = rec
      bucket_put(fresh, slots[i], key, rec)
      count = count + 1
    end
    out[i] = rec
  end
end
bucket_write(fresh)
redis.call("HINCRBY", KEYS[2], "calls", n)
redis.call("HINCRBY", KEYS[2], "recorded", count)
return out
