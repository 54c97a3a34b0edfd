-- stock_set.lua: make a quantity of one SKU available. Reserved and committed units are kept, and
-- initial moves with the change (initial = available + reserved + committed), in one atomic step so
-- a concurrent reservation cannot slip between the read and the write.
-- KEYS[1] available  KEYS[2] reserved  KEYS[3] committed  KEYS[4] initial  KEYS[5] meta
-- ARGV[1] sku  ARGV[2] quantity  ARGV[3] meta JSON (name, price_cents) or "" to keep it
local sku, qty = ARGV[1], tonumber(ARGV[2])
local reserved = tonumber(redis.call("HGET", KEYS[2], sku) or "0")
local committed = tonumber(redis.call("HGET", KEYS[3], sku) or "0")
redis.call("HSET", KEYS[1], sku, qty)
redis.call("HSET", KEYS[2], sku, reserved)
redis.call("HSET", KEYS[3], sku, committed)
redis.call("HSET", KEYS[4], sku, qty + reserved + committed)
if ARGV[3] ~= "" then
  redis.call("HSET", KEYS[5], sku, ARGV[3])
end
return 1
