-- stock_reserve.lua: reserve every line of each order in a batch, all lines or none.
-- Idempotent per reservation key (order id # attempt): a key already seen returns its first result,
-- so a retried or reclaimed message never reserves twice. Orders are decided one after the other
-- against the running stock of the batch; every check runs before any write, and the writes are
-- made once per batch (one HSET per stock column with the new values, one per bucket of records).
-- KEYS[1] available  KEYS[2] reserved  KEYS[3] committed  KEYS[4] initial
-- KEYS[5] reservations written before buckets  KEYS[6..] the batch's reservation buckets
-- ARGV[1] unknown-SKU policy (create|reject)  ARGV[2] default stock  ARGV[3] count n
-- then per order: reservation key, KEYS index of its bucket (lib/buckets.lua), number of SKUs m,
-- then m pairs (sku, quantity)
-- Returns one string per order: "r" reserved, or "f:<reason>" failed.
local policy, default_stock, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
-- Sums above 2^53 would lose digits in Lua numbers: such SKUs are moved with HINCRBY instead.
local EXACT = 9007199254740992

-- include: hash_batch
-- include: buckets
-- include: tally

-- Parse the batch; look up every reservation key and every SKU once.
local orders = {}
local rkeys, slots = {}, {}
local skus, seen = {}, {}
local p = 4
for i = 1, n do
  local m = tonumber(ARGV[p + 2])
  orders[i] = { p + 3, m }
  rkeys[i] = ARGV[p]
  slots[i] = tonumber(ARGV[p + 1])
  for j = 0, m - 1 do
    local sku = ARGV[p + 3 + 2 * j]
    if not seen[sku] then
      seen[sku] = true
      skus[#skus + 1] = sku
    end
  end
  p = p + 3 + 2 * m
end
local out = bucket_get(5, rkeys, slots)
local avail = {}
local stored = hmget_all(KEYS[1], skus)
for i = 1, #skus do
  if stored[i] then
    avail[skus[i]] = tonumber(stored[i]) or error("available stock of " .. skus[i] .. " is not a number")
  end
end

-- Decide each order in turn against the batch's running stock.
local taken, order_taken = {}, {}
local created = {}
local records = bucket_writes()
local decided = {}
for i = 1, n do
  if not out[i] and decided[rkeys[i]] then
    out[i] = decided[rkeys[i]] -- the same order attempt twice in one batch: its first result
  elseif not out[i] then
    local first, m = orders[i][1], orders[i][2]
    local reason = nil
    for j = 0, m - 1 do
      local sku, qty = ARGV[first + 2 * j], tonumber(ARGV[first + 2 * j + 1])
      local have = avail[sku]
      if not have then
        if policy ~= "create" then
          reason = "unknown_sku:" .. sku
          break
        end
        have = default_stock
      end
      if have < qty then
        reason = "out_of_stock:" .. sku
        break
      end
    end
    local rec = "r"
    if reason then
      rec = "f:" .. reason
    else
      for j = 0, m - 1 do
        local sku, qty = ARGV[first + 2 * j], tonumber(ARGV[first + 2 * j + 1])
        if not avail[sku] then
          avail[sku] = default_stock
          created[#created + 1] = sku
        end
        avail[sku] = avail[sku] - qty
        tally(taken, order_taken, sku, qty)
      end
    end
    bucket_put(records, slots[i], rkeys[i], rec)
    decided[rkeys[i]] = rec
    out[i] = rec
  end
end

-- Write: new SKUs, then the moved units, then the reservation records.
for _, sku in ipairs(created) do
  redis.call("HSET", KEYS[1], sku, default_stock)
  redis.call("HSET", KEYS[4], sku, default_stock)
  redis.call("HSETNX", KEYS[2], sku, 0)
  redis.call("HSETNX", KEYS[3], sku, 0)
end
if #order_taken > 0 then
  local reserved = hmget_all(KEYS[2], order_taken)
  local new_avail, new_reserved = {}, {}
  for i, sku in ipairs(order_taken) do
    local now_reserved = tonumber(reserved[i] or "0") + taken[sku]
    if avail[sku] >= 0 and avail[sku] < EXACT and now_reserved < EXACT then
      new_avail[#new_avail + 1] = sku
      new_avail[#new_avail + 1] = int(avail[sku])
      new_reserved[#new_reserved + 1] = sku
      new_reserved[#new_reserved + 1] = int(now_reserved)
    else
      redis.call("HINCRBY", KEYS[1], sku, int(-taken[sku]))
      redis.call("HINCRBY", KEYS[2], sku, int(taken[sku]))
    end
  end
  hset_all(KEYS[1], new_avail)
  hset_all(KEYS[2], new_reserved)
end
bucket_write(records)
return out
