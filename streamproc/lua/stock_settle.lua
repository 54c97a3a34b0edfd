-- stock_settle.lua: commit (finalize) or release (rollback) the reserved stock of each order.
-- Idempotent per reservation key: only a reservation in state "r" moves, to "c" (committed) or
-- "x" (released); any other state is returned unchanged so a replay does nothing.
-- KEYS[1] available  KEYS[2] reserved  KEYS[3] committed  KEYS[4] reservations
-- ARGV[1] mode (commit|release)  ARGV[2] count n
-- then per order: reservation key, number of SKUs m, then m pairs (sku, quantity)
-- Returns one string per order: the reservation's state after the call ("" when unknown).
local commit, n = ARGV[1] == "commit", tonumber(ARGV[2])
local out = {}
local p = 3
for i = 1, n do
  local rkey, m = ARGV[p], tonumber(ARGV[p + 1])
  local first = p + 2
  p = first + 2 * m
  local rec = redis.call("HGET", KEYS[4], rkey)
  if rec == "r" then
    for j = 0, m - 1 do
      local sku, qty = ARGV[first + 2 * j], tonumber(ARGV[first + 2 * j + 1])
      redis.call("HINCRBY", KEYS[2], sku, -qty)
      if commit then
        redis.call("HINCRBY", KEYS[3], sku, qty)
      else
        redis.call("HINCRBY", KEYS[1], sku, qty)
      end
    end
    rec = commit and "c" or "x"
    redis.call("HSET", KEYS[4], rkey, rec)
  end
  out[i] = rec or ""
end
return out
