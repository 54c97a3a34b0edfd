-- stock_settle.lua: commit (finalize) or release (rollback) the reserved stock of each order.
-- Idempotent per reservation key: only a reservation in state "r" moves, to "c" (committed) or
-- "x" (released); any other state is returned unchanged so a replay does nothing. The units move
-- once per batch and SKU (one HSET per stock column with the new values).
-- KEYS[1] available  KEYS[2] reserved  KEYS[3] committed
-- KEYS[4] reservations written before buckets  KEYS[5..] the batch's reservation buckets
-- ARGV[1] mode (commit|release)  ARGV[2] count n
-- then per order: reservation key, KEYS index of its bucket (lib/buckets.lua), number of SKUs m,
-- then m pairs (sku, quantity)
-- Returns one string per order: the reservation's state after the call ("" when unknown).
local commit, n = ARGV[1] == "commit", tonumber(ARGV[2])
local target = commit and KEYS[3] or KEYS[1]
local moved_to = commit and "c" or "x"
-- Sums above 2^53 would lose digits in Lua numbers: such SKUs are moved with HINCRBY instead.
local EXACT = 9007199254740992

-- include: hash_batch
-- include: buckets
-- include: tally

local starts, rkeys, slots = {}, {}, {}
local p = 3
for i = 1, n do
  starts[i] = p
  rkeys[i] = ARGV[p]
  slots[i] = tonumber(ARGV[p + 1])
  p = p + 3 + 2 * tonumber(ARGV[p + 2])
end
local states = bucket_get(4, rkeys, slots)
local out = {}
local moved, skus = {}, {}
-- A record moved is written to its bucket, also when it was found in the old hash: the bucket
-- is read first from then on.
local records = bucket_writes()
local done = {}
for i = 1, n do
  -- The same reservation twice in one batch moves once.
  local rec = done[rkeys[i]] or states[i]
  if rec == "r" then
    local first, m = starts[i] + 3, tonumber(ARGV[starts[i] + 2])
    for j = 0, m - 1 do
      local sku, qty = ARGV[first + 2 * j], tonumber(ARGV[first + 2 * j + 1])
      tally(moved, skus, sku, qty)
    end
    rec = moved_to
    bucket_put(records, slots[i], rkeys[i], rec)
    done[rkeys[i]] = rec
  end
  out[i] = rec or ""
end
if #skus > 0 then
  local reserved = hmget_all(KEYS[2], skus)
  local there = hmget_all(target, skus)
  local new_reserved, new_there = {}, {}
  for i, sku in ipairs(skus) do
    local r = tonumber(reserved[i] or "0") - moved[sku]
    local t = tonumber(there[i] or "0") + moved[sku]
    if r > -EXACT and r < EXACT and t < EXACT then
      new_reserved[#new_reserved + 1] = sku
      new_reserved[#new_reserved + 1] = int(r)
      new_there[#new_there + 1] = sku
      new_there[#new_there + 1] = int(t)
    else
      redis.call("HINCRBY", KEYS[2], sku, int(-moved[sku]))
      redis.call("HINCRBY", target, sku, int(moved[sku]))
    end
  end
  hset_all(KEYS[2], new_reserved)
  hset_all(target, new_there)
end
bucket_write(records)
return out
