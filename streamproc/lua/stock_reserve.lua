-- stock_reserve.lua: reserve every line of each order in a batch, all lines or none.
-- Idempotent per reservation key (order id # attempt): a key already seen returns its first result,
-- so a retried or reclaimed message never reserves twice. Checks run before any write for an order
-- because Lua does not roll back.
-- KEYS[1] available  KEYS[2] reserved  KEYS[3] committed  KEYS[4] initial  KEYS[5] reservations
-- ARGV[1] unknown-SKU policy (create|reject)  ARGV[2] default stock  ARGV[3] count n
-- then per order: reservation key, number of SKUs m, then m pairs (sku, quantity)
-- Returns one string per order: "r" reserved, or "f:<reason>" failed.
local policy, default_stock, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local p = 4
for i = 1, n do
  local rkey, m = ARGV[p], tonumber(ARGV[p + 1])
  local first = p + 2
  p = first + 2 * m
  local rec = redis.call("HGET", KEYS[5], rkey)
  if rec then
    out[i] = rec
  else
    local reason = nil
    local creates = {}
    for j = 0, m - 1 do
      local sku, qty = ARGV[first + 2 * j], tonumber(ARGV[first + 2 * j + 1])
      local avail = redis.call("HGET", KEYS[1], sku)
      if not avail then
        if policy ~= "create" then
          reason = "unknown_sku:" .. sku
          break
        end
        avail = default_stock
        creates[sku] = true
      end
      if tonumber(avail) < qty then
        reason = "out_of_stock:" .. sku
        break
      end
    end
    if reason then
      rec = "f:" .. reason
    else
      for j = 0, m - 1 do
        local sku, qty = ARGV[first + 2 * j], tonumber(ARGV[first + 2 * j + 1])
        if creates[sku] then
          redis.call("HSET", KEYS[1], sku, default_stock)
          redis.call("HSET", KEYS[4], sku, default_stock)
          redis.call("HSETNX", KEYS[2], sku, 0)
          redis.call("HSETNX", KEYS[3], sku, 0)
        end
        redis.call("HINCRBY", KEYS[1], sku, -qty)
        redis.call("HINCRBY", KEYS[2], sku, qty)
      end
      rec = "r"
    end
    redis.call("HSET", KEYS[5], rkey, rec)
    out[i] = rec
  end
end
return out
